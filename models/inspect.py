"""python -m models.inspect DIR: signatures, feature spec, tfx-bsl contract of a SavedModel, which
engines can run it (each loads it as a job would and scores golden examples), and where else it can
run as it is: TF Serving, BigQuery ML, Vertex AI (models.portability). --json prints the whole report
as one JSON object. Exit 1 when the contract fails or an engine cannot run the model."""

import sys

if __name__ == "__main__":  # before TensorFlow loads, so its start-up lines stay off the console
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)


import json
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from models import cli
from models.tf_console import console_logging


def _shape(info) -> Optional[List[Optional[int]]]:
    """The TensorInfo's shape, None for a dimension of any size; None when the rank is unknown."""
    from models.serving.dense import tensor_info

    shape = tensor_info(info)[1]
    return None if shape is None else list(shape)


def _tensor_text(name: str, info) -> str:
    from models.serving.dense import dtype_name, tensor_kind

    kind, dtype = tensor_kind(info)
    if kind != "dense":  # a SparseTensor or RaggedTensor: its TensorInfo holds no dense shape
        return f"{name}: {kind} {dtype_name(dtype) or 'tensor'}"
    shape = _shape(info)
    return f"{name}: {dtype_name(dtype)} {'unknown' if shape is None else str(shape)}"


def _tensor_line(name: str, info) -> str:
    return f"      {_tensor_text(name, info)}"


class Inspection(NamedTuple):
    """A model's report as text and as one JSON-ready dict, and whether a job can run it."""
    text: str
    data: Dict[str, object]
    runnable: bool


def inspect_report(path: str, signature: str = "serving_default") -> (str, bool):
    """Returns the report text and whether a job can run the model: with at least one engine (a
    tf.Module export that only the fast engine runs is fine; the report says so)."""
    inspection = inspect_model(path, signature)
    return inspection.text, inspection.runnable


def inspect_model(path: str, signature: str = "serving_default") -> Inspection:
    """The whole report: the model is read and each engine loads it once; the portability
    verdicts reuse what that found (models.portability)."""
    from models import portability
    from models.serving import layout
    from models.serving.contract import contract_problems, serving_meta_graph, tf1_loader_problems
    from models.serving.dense import inputs_problem
    from models.serving.engines import TFX_BSL_ENGINE
    from models.serving.fingerprint import saved_model_fingerprint

    version_dir = layout.resolve_version_dir(path)
    fingerprint = saved_model_fingerprint(version_dir)
    meta_graph = serving_meta_graph(version_dir)
    facts = portability.model_facts(path, version_dir, meta_graph, signature, fingerprint["bytes"])
    lines = _header_lines(version_dir, fingerprint) + _signature_lines(meta_graph)
    data = {"saved_model": version_dir, **fingerprint, "tensorflow_version": facts.tensorflow_version,
            "signature": signature, "signatures": _signatures_data(meta_graph),
            "warmup": {"records": facts.warmup_records, "problem": facts.warmup_problem}}
    inputs = _tensor_inputs(version_dir, meta_graph, signature)
    spec_lines, data["feature_spec"] = _feature_spec(version_dir, signature, inputs)
    any_engine_problems = contract_problems(version_dir, signature, tf1_loader=False, tensor_inputs=bool(inputs))
    tf1_problems = tf1_loader_problems(meta_graph, signature) if signature in meta_graph.signature_def else []
    # what stops tfx-bsl, said once (on the contract's line): a signature of tensors, the TF1 loader
    tfx_bsl_problems = ([inputs_problem(version_dir, signature)] if inputs else []) + tf1_problems
    runs = engine_report(version_dir, signature, skip={TFX_BSL_ENGINE: _TAKES_TENSORS} if inputs else {})
    runnable = [engine for engine, (ok, _) in runs.items() if ok]
    verdicts = (portability.engine_verdicts(runs, any_engine_problems, tf1_problems)
                + portability.target_verdicts(facts))
    lines += portability.portability_lines(verdicts)
    lines += spec_lines + _warmup_lines(version_dir)
    lines += _contract_lines(signature, any_engine_problems + tfx_bsl_problems)
    lines.append(f"engines ({signature}), each loading the model as a job does and scoring golden examples:")
    lines += [f"  {engine}: {verdict}" for engine, (_, verdict) in runs.items()]
    if runnable and len(runnable) < len(runs):
        lines.append(f"runs with --engine {' or '.join(runnable)} only")
    ok = bool(runnable) and not any_engine_problems
    data.update(takes="tensors" if inputs else "serialized tf.Example",
                contract=_contract_data(signature, any_engine_problems + tfx_bsl_problems),
                engines={engine: {"runs": ran, "detail": detail} for engine, (ran, detail) in runs.items()},
                runnable=ok, portability=[v.as_dict() for v in verdicts])
    return Inspection("\n".join(lines), data, ok)


_TAKES_TENSORS = "refused: the signature takes tensors (the tfx-bsl contract above says why, and what to do)"


def _tensor_inputs(version_dir: str, meta_graph, signature: str):
    """{input: (dtype, shape)} when the signature takes tensors (models.serving.dense), else {}."""
    from models.serving.dense import signature_inputs

    if signature not in meta_graph.signature_def:
        return {}
    return signature_inputs(version_dir, signature)


def _signatures_data(meta_graph) -> Dict[str, object]:
    def tensors(infos):
        from models.serving.dense import dtype_name, tensor_kind

        out = {}
        for name, info in sorted(infos.items()):
            kind, dtype = tensor_kind(info)
            out[name] = {"dtype": dtype_name(dtype), "shape": _shape(info) if kind == "dense" else None, "kind": kind}
        return out
    return {name: {"method": sig.method_name, "inputs": tensors(sig.inputs), "outputs": tensors(sig.outputs)}
            for name, sig in sorted(meta_graph.signature_def.items()) if not name.startswith("__")}


def _contract_data(signature: str, problems: List[str]) -> Dict[str, object]:
    return {"signature": signature, "ok": not problems, "problems": list(problems)}


def _header_lines(version_dir: str, fingerprint: Dict[str, object]) -> List[str]:
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


def _feature_spec(version_dir: str, signature: str, inputs=None) -> Tuple[List[str], Dict[str, object]]:
    """The report's feature spec lines and its JSON: {"source", "features"} or {"error"}. A
    signature of tensors gets the spec its inputs give (what the fast engine parses records into)."""
    from models.serving.feature_spec import describe, spec_to_json
    from models.serving.model import model_spec

    try:
        spec, source, _ = model_spec(version_dir, signature)
    except Exception as e:  # pylint: disable=broad-except  # reported, not raised: the rest still helps
        return [f"feature spec: unavailable ({e})"], {"error": str(e)}
    head = f"feature spec (from {source}):"
    if inputs:
        head = (f"takes ({signature}): tensors, not serialized tf.Example; the fast engine parses each batch "
                f"of records into them by this feature spec (from the signature's inputs; --feature_spec "
                "overrides it):")
    return [head, describe(spec)], {"source": source, "features": spec_to_json(spec)}


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


def engine_report(version_dir: str, signature: str = "serving_default", skip: Optional[Dict[str, str]] = None
                  ) -> Dict[str, Tuple[bool, str]]:
    """{engine: (runs, what happened)}: each engine loads the model the way a job does
    (models.serving.engines) and scores two golden examples built from the feature spec. skip:
    {engine: why} for the engines a job refuses before loading the model."""
    from models.serving.examples import golden_records
    from models.serving.errors import error_text
    from models.serving.engines import ENGINES
    from models.serving.model import model_spec
    from models.serving.op_libraries import import_for_model

    try:
        spec, _, _ = model_spec(version_dir, signature)
        records = golden_records(spec, 2)
    except Exception as e:  # pylint: disable=broad-except  # reported, not raised
        return {engine: (False, f"no golden examples: {e}") for engine in ENGINES}
    report = {}
    for engine, load in ENGINES.items():
        if engine in (skip or {}):
            report[engine] = (False, skip[engine])
            continue
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
    parser.add_argument("--json", action="store_true",
                        help="print the whole report (signatures, feature spec, contract, engines, "
                             "portability) as one JSON object")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    console_logging(["--verbose"] if args.verbose else [])
    try:
        inspection = inspect_model(args.model_dir, args.signature)
    except Exception as e:
        print(f"models.inspect: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(inspection.data, indent=2) if args.json else inspection.text)
    return 0 if inspection.runnable else 1


if __name__ == "__main__":
    sys.exit(main())
