"""python -m models.inspect DIR: signatures, feature spec, tfx-bsl contract of a SavedModel, and which
engines can run it (each loads it as a job would and scores golden examples). Exit 1 when the
contract fails or an engine cannot run the model."""

import sys

if __name__ == "__main__":  # before TensorFlow loads, so its start-up lines stay off the console
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)


from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from models import cli
from models.tf_console import console_logging


def _tensor_line(name: str, info) -> str:
    dims = [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    shape = "unknown" if info.tensor_shape.unknown_rank else str(dims)
    return f"      {name}: {tf.as_dtype(info.dtype).name} {shape}"


def inspect_report(path: str, signature: str = "serving_default") -> (str, bool):
    """Returns the report text and whether a job can run the model: with at least one engine (a
    tf.Module export that only the fast engine runs is fine; the report says so)."""
    from models import layout
    from models.contract import contract_problems, serving_meta_graph, tf1_loader_problems
    from models.fingerprint import saved_model_fingerprint
    from models.feature_spec import describe
    from models.serving_model import read_feature_spec

    version_dir = layout.resolve_version_dir(path)
    meta_graph = serving_meta_graph(version_dir)
    fingerprint = saved_model_fingerprint(version_dir)
    lines: List[str] = [f"SavedModel: {version_dir}",
                        f"sha256: {fingerprint['sha256']} ({fingerprint['files']} files, "
                        f"{fingerprint['bytes']:,} bytes)", "signatures:"]
    for name, sig in sorted(meta_graph.signature_def.items()):
        if name.startswith("__"):
            continue
        lines.append(f"  {name} ({sig.method_name})")
        lines.append("    inputs:")
        lines += [_tensor_line(k, v) for k, v in sorted(sig.inputs.items())]
        lines.append("    outputs:")
        lines += [_tensor_line(k, v) for k, v in sorted(sig.outputs.items())]
    try:
        spec, source = read_feature_spec(version_dir, signature)
        lines.append(f"feature spec (from {source}):")
        lines.append(describe(spec))
    except Exception as e:
        lines.append(f"feature spec: unavailable ({e})")
    from models.warmup import WARMUP_FILE, read_warmup

    try:
        requests = read_warmup(version_dir)
        lines.append(f"TF Serving warmup: {len(requests)} requests ({WARMUP_FILE})" if requests
                     else "TF Serving warmup: none")
    except Exception as e:
        lines.append(f"TF Serving warmup: unreadable ({e})")
    any_engine_problems = contract_problems(version_dir, signature, tf1_loader=False)
    problems = any_engine_problems + tf1_loader_problems(meta_graph, signature)
    if problems:
        lines.append(f"tfx-bsl contract ({signature}): FAILS")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append(f"tfx-bsl contract ({signature}): OK (one DT_STRING input; every variable the "
                     "signature reads is restored by the TF1 saver)")
    runs = engine_report(version_dir, signature)
    lines.append(f"engines ({signature}), each loading the model as a job does and scoring golden examples:")
    lines += [f"  {engine}: {verdict}" for engine, (_, verdict) in runs.items()]
    runnable = [engine for engine, (ok, _) in runs.items() if ok]
    if runnable and len(runnable) < len(runs):
        lines.append(f"runs with --engine {' or '.join(runnable)} only")
    return "\n".join(lines), bool(runnable) and not any_engine_problems


def engine_report(version_dir: str, signature: str = "serving_default") -> Dict[str, Tuple[bool, str]]:
    """{engine: (runs, what happened)}: each engine loads the model the way a job does
    (transforms.scoring.engines) and scores two golden examples built from the feature spec."""
    from models.examples import golden_records
    from models.serving_model import read_feature_spec
    from transforms.records.dead_letters import error_text
    from transforms.scoring.engines import ENGINES

    try:
        spec, _ = read_feature_spec(version_dir, signature)
        records = golden_records(spec, 2)
    except Exception as e:  # pylint: disable=broad-except  # reported, not raised
        return {engine: (False, f"no golden examples: {e}") for engine in ENGINES}
    report = {}
    for engine, load in ENGINES.items():
        try:
            call = load(version_dir, signature)
            outputs = call(records)
            report[engine] = (True, f"OK ({type(call).__name__}: {', '.join(sorted(outputs))})")
        except Exception as e:  # pylint: disable=broad-except  # what the engine says, for the report
            report[engine] = (False, f"cannot run it: {type(e).__name__}: {error_text(e)}")
    return report


def argument_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m models.inspect", description=__doc__)
    parser.add_argument("model_dir", help="version directory or base directory (highest version)")
    parser.add_argument("--signature", default="serving_default")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    console_logging(["--verbose"] if args.verbose else [])
    try:
        report, ok = inspect_report(args.model_dir, args.signature)
    except Exception as e:
        print(f"models.inspect: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
