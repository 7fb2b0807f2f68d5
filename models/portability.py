"""Where else a SavedModel can run as it is: TF Serving's stock build, BigQuery ML's TensorFlow
import and Vertex AI's prebuilt TensorFlow containers, next to our own engines. What
`python -m models.inspect` prints under "portability:".

model_facts reads what the checks need from saved_model.pb (op types, the TensorFlow version that
saved it, the GraphDef producer version, the signature's tensors), the warmup file and the path the
model was given as; the verdict functions are pure over those facts, so each limit is tested on
facts as well as on real models. A verdict says, per target, whether it takes the model and every
reason it does not; notes are what does not stop it (no warmup file, say).
"""

import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

FAST, TFX_BSL = "fast", "tfx-bsl"
TF_SERVING, BIGQUERY_ML, VERTEX_AI = "TF Serving", "BigQuery ML", "Vertex AI"

# BigQuery ML's TensorFlow model import, as the CREATE MODEL page gives its limits:
# https://cloud.google.com/bigquery/docs/reference/standard-sql/bigqueryml-syntax-create-tensorflow
#   "Models are limited to 450 MB in size."
#   "Models trained using a version of GraphDef earlier than version 20 aren't supported."
#   "Models trained using an unreleased version of TensorFlow aren't supported."
#   "Only core TensorFlow operations are supported; models that use custom or tf.contrib
#    operations aren't supported."
#   "RaggedTensors aren't supported." ("The model input columns can be either dense Tensors or
#    SparseTensors"; a SparseTensor of a supported type is supported, in and out.)
#   Supported input/output types: tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16,
#    tf.uint32, tf.uint64 (INT64); tf.float16, tf.float32, tf.float64, tf.bfloat16 (FLOAT64);
#    tf.bool (BOOL); tf.string (STRING); tf.train.Example of those. Unsupported: tf.complex64,
#    tf.complex128, tf.qint8, tf.quint8, tf.qint16, tf.quint16, tf.qint32, tf.resource, tf.variant.
#   "When you load TensorFlow models into RAM for predictions, they have a memory limit
#    (typically 250 MB)." (a note here: the in-memory size is not in the files)
# The page says "MB"; 450 MB is taken as 450,000,000 bytes, the smaller reading.
BQML_MAX_BYTES = 450 * 1000 * 1000
BQML_TYPICAL_MEMORY_BYTES = 250 * 1000 * 1000
BQML_MIN_GRAPHDEF_VERSION = 20
BQML_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
               "float16", "float32", "float64", "bfloat16", "bool", "string")

# Vertex AI's prebuilt TensorFlow containers for prediction, as the page lists them:
# https://cloud.google.com/vertex-ai/docs/predictions/pre-built-containers
#   images are listed for TensorFlow 2.15 and 2.14 (tf2-cpu.2-15, tf2-gpu.2-15, tf2-cpu.2-14,
#   tf2-gpu.2-14, each ":latest" in us-, europe- and asia-docker.pkg.dev/vertex-ai/prediction);
#   1.15 and 2.1 to 2.13 are past their end of availability (no image listed). The containers
#   run TF Serving's stock build: core ops only.
VERTEX_TF_VERSIONS = ((2, 14), (2, 15))

# TF Serving reads assets.extra/tf_serving_warmup_requests when it loads a version and fails the
# load on a record it cannot parse, a request that fails, or more than 1000 records.
TF_SERVING_MAX_WARMUP_RECORDS = 1000


@dataclass(frozen=True)
class TensorFact:
    """One signature input or output: kind is "dense", "sparse" (a SparseTensor), "ragged" (a
    RaggedTensor) or another composite's type spec name; dtype is its values' type ("" unknown)."""
    side: str
    name: str
    dtype: str
    kind: str = "dense"


@dataclass(frozen=True)
class ModelFacts:
    """What the portability checks read of a model. warmup_records is None when it has no warmup
    file; warmup_problem says why the file cannot be read (None when it can)."""
    given_path: str
    version_dir: str
    signature: str
    has_signature: bool
    size_bytes: int
    tensorflow_version: str
    graphdef_version: int
    non_core_ops: Tuple[str, ...]
    tensors: Tuple[TensorFact, ...]
    signatures: Tuple[str, ...]
    warmup_records: Optional[int] = None
    warmup_problem: Optional[str] = None
    warmup_signatures: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    target: str
    ok: bool
    reasons: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()

    def text(self) -> str:
        """"OK" or "no: reason; reason", then any notes."""
        text = "OK" if self.ok else "no: " + "; ".join(self.reasons)
        return text + "".join(f" (note: {note})" for note in self.notes)

    def as_dict(self) -> Dict[str, object]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def _verdict(target: str, reasons: Sequence[str], notes: Sequence[str] = ()) -> Verdict:
    return Verdict(target, not reasons, tuple(reasons), tuple(notes))


# ------------------------------------------------------------------------------------------
# our engines: what models.inspect already found (engine_report, the contract problems)
# ------------------------------------------------------------------------------------------

def engine_verdicts(runs: Mapping[str, Tuple[bool, str]], contract_problems: Sequence[str],
                    tf1_loader_problems: Sequence[str]) -> List[Verdict]:
    """One verdict per engine from engine_report's {engine: (runs, what happened)}: a contract
    problem (all engines) or a TF1 loader problem (tfx-bsl) is the reason when there is one, else
    what the engine said when it could not score the golden examples."""
    verdicts = []
    for engine, (ran, detail) in runs.items():
        problems = list(contract_problems) + (list(tf1_loader_problems) if engine == TFX_BSL else [])
        verdicts.append(_verdict(engine, problems or ([] if ran else [detail])))
    return verdicts


# ------------------------------------------------------------------------------------------
# pure checks over ModelFacts
# ------------------------------------------------------------------------------------------

def _ops_reason(facts: ModelFacts) -> List[str]:
    if not facts.non_core_ops:
        return []
    shown = ", ".join(facts.non_core_ops[:5]) + (" ..." if len(facts.non_core_ops) > 5 else "")
    return [f"uses op types that stock TensorFlow does not define ({shown}): they come from an op "
            "library, which this target cannot load"]


def layout_problem(given_path: str, version_dir: str) -> Optional[str]:
    """Why TF Serving cannot serve the directory as it was given, or None: its --model_base_path
    is a base directory of numbered versions (base/1/saved_model.pb), so a SavedModel directory
    given bare must sit in a numbered directory, and its parent is the base."""
    given = given_path.rstrip("/")
    if given != version_dir.rstrip("/"):
        return None  # a base directory: version_dir is its highest numbered version
    if os.path.basename(given).isdigit():
        return None
    return (f"{given} is a bare SavedModel, not in a numbered version directory: TF Serving's "
            "--model_base_path must hold version directories; copy it to BASE/1/ (BASE/1/saved_model.pb) "
            "and serve BASE")


def tf_serving_verdict(facts: ModelFacts) -> Verdict:
    """TF Serving's stock build (tensorflow/serving image): core ops only, the base/<version>/
    layout, and a warmup file it can replay (none is a note: the first requests then pay for
    graph initialisation)."""
    reasons = _ops_reason(facts)
    layout = layout_problem(facts.given_path, facts.version_dir)
    reasons += [layout] if layout else []
    notes = []
    if facts.warmup_problem:
        reasons.append(f"its warmup file cannot be read ({facts.warmup_problem}); TF Serving fails the load")
    elif facts.warmup_records is None:
        notes.append("no assets.extra/tf_serving_warmup_requests: the first requests pay for graph "
                     "initialisation")
    elif facts.warmup_records > TF_SERVING_MAX_WARMUP_RECORDS:
        reasons.append(f"its warmup file has {facts.warmup_records} records; TF Serving fails the load past "
                       f"{TF_SERVING_MAX_WARMUP_RECORDS}")
    missing = sorted({name or "serving_default" for name in facts.warmup_signatures} - set(facts.signatures))
    if missing:
        reasons.append(f"its warmup requests name signature(s) {missing} that the model does not have; "
                       "TF Serving fails the load")
    return _verdict(TF_SERVING, reasons, notes)


def bigquery_ml_size_reasons(size_bytes: int) -> List[str]:
    """The 450 MB limit on an imported model's files."""
    if size_bytes <= BQML_MAX_BYTES:
        return []
    return [f"its files are {size_bytes:,} bytes; BigQuery ML imports models up to 450 MB"]


def _unreleased(version: str) -> bool:
    """A nightly or pre-release build's version (2.22.0-dev20260301, 2.21.0rc1), not X.Y.Z."""
    return bool(version) and re.fullmatch(r"\d+\.\d+\.\d+", version) is None


def _bqml_tensor_reason(tensor: TensorFact) -> Optional[str]:
    what = f"{tensor.side} {tensor.name!r}"
    if tensor.kind == "ragged":
        return f"{what} is a RaggedTensor; BigQuery ML does not support RaggedTensors"
    if tensor.kind not in ("dense", "sparse"):
        return f"{what} is a {tensor.kind}; BigQuery ML takes dense tensors and SparseTensors only"
    if tensor.dtype not in BQML_DTYPES:
        return f"{what} is {tensor.dtype or 'of no known type'}; BigQuery ML does not support that type"
    return None


def bigquery_ml_verdict(facts: ModelFacts) -> Verdict:
    """BigQuery ML's CREATE MODEL ... OPTIONS(model_type='TENSORFLOW'), by the limits its page
    lists (see BQML_* above): size, GraphDef version, a released TensorFlow, core ops only, and
    the signature's inputs and outputs (types, no RaggedTensors)."""
    reasons = bigquery_ml_size_reasons(facts.size_bytes)
    if facts.graphdef_version < BQML_MIN_GRAPHDEF_VERSION:
        reasons.append(f"its GraphDef version is {facts.graphdef_version}; BigQuery ML needs "
                       f"{BQML_MIN_GRAPHDEF_VERSION} or later")
    if _unreleased(facts.tensorflow_version):
        reasons.append(f"it was saved by TensorFlow {facts.tensorflow_version}, not a released version; "
                       "BigQuery ML does not import those")
    reasons += _ops_reason(facts)
    if not facts.has_signature:
        reasons.append(f"no signature {facts.signature!r}")
    reasons += [r for r in map(_bqml_tensor_reason, facts.tensors) if r]
    notes = []
    if facts.size_bytes > BQML_TYPICAL_MEMORY_BYTES and not reasons:
        notes.append(f"its files are {facts.size_bytes:,} bytes; loaded for predictions a model has a memory "
                     "limit (typically 250 MB)")
    return _verdict(BIGQUERY_ML, reasons, notes)


def _major_minor(version: str) -> Optional[Tuple[int, int]]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def vertex_ai_verdict(facts: ModelFacts) -> Verdict:
    """Vertex AI's prebuilt TensorFlow prediction containers: core ops only, and a TensorFlow no
    newer than the newest container's (TensorFlow does not promise that an older version loads what
    a newer one saved; older SavedModels load in newer TensorFlow)."""
    reasons, notes = _ops_reason(facts), []
    newest = max(VERTEX_TF_VERSIONS)
    saved = _major_minor(facts.tensorflow_version)
    offered = ", ".join(f"{a}.{b}" for a, b in VERTEX_TF_VERSIONS)
    if saved is None:
        notes.append(f"saved_model.pb does not say which TensorFlow saved it; the containers offer {offered}")
    elif saved > newest:
        image = f"{newest[0]}-{newest[1]}"
        reasons.append(f"saved by TensorFlow {facts.tensorflow_version}; the prebuilt containers offer TensorFlow "
                       f"{offered} (tf2-cpu.{image}, tf2-gpu.{image} the newest), and an older TensorFlow is not "
                       f"promised to load what a newer one saved: use a custom container with TF Serving "
                       f"{saved[0]}.{saved[1]} or later")
    return _verdict(VERTEX_AI, reasons, notes)


def target_verdicts(facts: ModelFacts) -> List[Verdict]:
    """TF Serving, BigQuery ML and Vertex AI, in that order."""
    return [tf_serving_verdict(facts), bigquery_ml_verdict(facts), vertex_ai_verdict(facts)]


def portability_lines(verdicts: Sequence[Verdict]) -> List[str]:
    return ["portability:"] + [f"  {v.target}: {v.text()}" for v in verdicts]


# ------------------------------------------------------------------------------------------
# reading the facts
# ------------------------------------------------------------------------------------------

def signature_tensors(signature_def) -> Tuple[TensorFact, ...]:
    from models.serving.dense import dtype_name, tensor_kind

    facts = []
    for side, tensors in (("input", signature_def.inputs), ("output", signature_def.outputs)):
        for name, info in sorted(tensors.items()):
            kind, dtype = tensor_kind(info)
            facts.append(TensorFact(side, name, dtype_name(dtype), kind))
    return tuple(facts)


def _warmup_facts(version_dir: str) -> Dict[str, object]:
    from models.preparation.warmup import WARMUP_FILE, read_warmup

    try:
        logs = read_warmup(version_dir)
    except Exception as e:  # pylint: disable=broad-except  # an unreadable file is a finding, not an error
        return {"warmup_problem": f"{type(e).__name__}: {e}".splitlines()[0]}
    if not logs:
        import tensorflow as tf

        return {"warmup_records": 0 if tf.io.gfile.exists(os.path.join(version_dir, WARMUP_FILE)) else None}
    names = []
    for log in logs:
        kind = log.WhichOneof("log_type")
        request = getattr(getattr(log, kind), "request", None) if kind else None
        if request is not None and request.HasField("model_spec"):
            names.append(request.model_spec.signature_name)
    return {"warmup_records": len(logs), "warmup_signatures": tuple(names)}


def model_facts(given_path: str, version_dir: str, meta_graph, signature: str, size_bytes: int) -> ModelFacts:
    """The facts of the model at version_dir (resolved from given_path), its serving meta graph
    already parsed and its size already summed (models.inspect has both)."""
    from models.serving.graph_ops import graph_op_names, non_core_ops

    signature_def = meta_graph.signature_def.get(signature)
    return ModelFacts(
        given_path=given_path, version_dir=version_dir, signature=signature,
        has_signature=signature_def is not None, size_bytes=size_bytes,
        tensorflow_version=meta_graph.meta_info_def.tensorflow_version,
        graphdef_version=meta_graph.graph_def.versions.producer,
        non_core_ops=tuple(non_core_ops(graph_op_names(meta_graph))),
        tensors=signature_tensors(signature_def) if signature_def is not None else (),
        signatures=tuple(sorted(name for name in meta_graph.signature_def if not name.startswith("__"))),
        **_warmup_facts(version_dir))
