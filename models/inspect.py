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


def _tensor_text(name: str, info) -> str:
    dims = [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    shape = "unknown" if info.tensor_shape.unknown_rank else str(dims)
    return f"{name}: {tf.as_dtype(info.dtype).name} {shape}"


def _tensor_line(name: str, info) -> str:
    return f"      {_tensor_text(name, info)}"


def inspect_report(path: str, signature: str = "serving_default") -> (str, bool):
    """Returns the report text and whether a job can run the model: with at least one engine (a
    tf.Module export that only the fast engine runs is fine; the report says so)."""
    from models.serving import layout
    from models.serving.contract import contract_problems, serving_meta_graph, tf1_loader_problems

    version_dir = layout.resolve_version_dir(path)
    meta_graph = serving_meta_graph(version_dir)
    lines = _header_lines(version_dir) + _signature_lines(meta_graph)
    dense = _dense_inputs(meta_graph, signature)
    if dense:
        return "\n".join(lines + _dense_lines(version_dir, signature, dense)), False
    lines += _feature_spec_lines(version_dir, signature) + _warmup_lines(version_dir)
    any_engine_problems = contract_problems(version_dir, signature, tf1_loader=False)
    lines += _contract_lines(signature, any_engine_problems + tf1_loader_problems(meta_graph, signature))
    runs = engine_report(version_dir, signature)
    lines.append(f"engines ({signature}), each loading the model as a job does and scoring golden examples:")
    lines += [f"  {engine}: {verdict}" for engine, (_, verdict) in runs.items()]
    runnable = [engine for engine, (ok, _) in runs.items() if ok]
    if runnable and len(runnable) < len(runs):
        lines.append(f"runs with --engine {' or '.join(runnable)} only")
    return "\n".join(lines), bool(runnable) and not any_engine_problems


def _header_lines(version_dir: str) -> List[str]:
    from models.serving.fingerprint import saved_model_fingerprint

    fingerprint = saved_model_fingerprint(version_dir)
    return [f"SavedModel: {version_dir}",
            f"sha256: {fingerprint['sha256']} ({fingerprint['files']} files, {fingerprint['bytes']:,} bytes)"]


def _signature_lines(meta_graph) -> List[str]:
    lines = ["signatures:"]
    for name, sig in sorted(meta_graph.signature_def.items()):
        if name.startswith("__"):
            continue
        lines.append(f"  {name} ({sig.method_name})")
        lines.append("    inputs:")
        lines += [_tensor_line(k, v) for k, v in sorted(sig.inputs.items())]
        lines.append("    outputs:")
        lines += [_tensor_line(k, v) for k, v in sorted(sig.outputs.items())]
    return lines


def _feature_spec_lines(version_dir: str, signature: str) -> List[str]:
    from models.serving.feature_spec import describe
    from models.serving.model import read_feature_spec

    try:
        spec, source = read_feature_spec(version_dir, signature)
    except Exception as e:  # pylint: disable=broad-except  # reported, not raised: the rest still helps
        return [f"feature spec: unavailable ({e})"]
    return [f"feature spec (from {source}):", describe(spec)]


def _warmup_lines(version_dir: str) -> List[str]:
    from models.preparation.warmup import WARMUP_FILE, read_warmup

    try:
        requests = read_warmup(version_dir)
    except Exception as e:  # pylint: disable=broad-except  # reported, not raised: the rest still helps
        return [f"TF Serving warmup: unreadable ({e})"]
    return [f"TF Serving warmup: {len(requests)} requests ({WARMUP_FILE})" if requests else "TF Serving warmup: none"]


def _contract_lines(signature: str, problems: List[str]) -> List[str]:
    if problems:
        return [f"tfx-bsl contract ({signature}): FAILS"] + [f"  - {p}" for p in problems]
    return [f"tfx-bsl contract ({signature}): OK (one DT_STRING input; every variable the "
            "signature reads is restored by the TF1 saver)"]


def _dense_inputs(meta_graph, signature: str) -> List[str]:
    """The signature's inputs ("name: dtype shape") when it takes tensors rather than one string
    input of serialized tf.Example (a Keras model.export(), say); empty when it takes one string."""
    from models.serving.contract import input_problems

    sig = meta_graph.signature_def.get(signature)
    if sig is None or not input_problems(signature, sig):
        return []
    return [_tensor_text(k, v) for k, v in sorted(sig.inputs.items())]


def _dense_lines(version_dir: str, signature: str, inputs: List[str]) -> List[str]:
    """What a signature of dense inputs takes, that no engine scores it as it is, and the one thing
    to do: another signature of the model that takes tf.Example, or models.prepare."""
    from models.serving.contract import contract_problems

    problems = contract_problems(version_dir, signature, tf1_loader=False, prepare_hint=False)
    return [f"takes ({signature}): dense tensors ({'; '.join(inputs)}), not serialized tf.Example, "
            "so it has no feature spec",
            *_warmup_lines(version_dir), *_contract_lines(signature, problems),
            f"engines ({signature}): neither fast nor tfx-bsl can score it as it is (both give the model "
            "serialized tf.Example); a job refuses it before it starts",
            "to score it: " + _dense_remedy(version_dir, signature)]


def _dense_remedy(version_dir: str, signature: str) -> str:
    from models.serving.signature_spec import examples_input
    from models.serving.contract import serving_meta_graph

    others = [name for name in sorted(serving_meta_graph(version_dir).signature_def)
              if name != signature and examples_input(version_dir, name)]
    if others:
        return f"--signature {others[0]}, which takes serialized tf.Example"
    return (f"python -m models.prepare --model {version_dir} --output DIR, then --model DIR (it adds a "
            "serving_default signature that parses tf.Example into these inputs, its feature spec derived "
            "from them)")


def engine_report(version_dir: str, signature: str = "serving_default") -> Dict[str, Tuple[bool, str]]:
    """{engine: (runs, what happened)}: each engine loads the model the way a job does
    (models.serving.engines) and scores two golden examples built from the feature spec."""
    from models.serving.examples import golden_records
    from models.serving.model import read_feature_spec
    from models.serving.errors import error_text
    from models.serving.engines import ENGINES
    from models.serving.op_libraries import import_for_model

    try:
        spec, _ = read_feature_spec(version_dir, signature)
        records = golden_records(spec, 2)
    except Exception as e:  # pylint: disable=broad-except  # reported, not raised
        return {engine: (False, f"no golden examples: {e}") for engine in ENGINES}
    report = {}
    for engine, load in ENGINES.items():
        try:
            import_for_model(version_dir)  # tensorflow-text's, YDF's ops... imported first, as a job does
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
