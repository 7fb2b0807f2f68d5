"""Post-export verification: the export, loaded both ways, must reproduce the in-memory model.

Golden examples are generated from the feature spec; the reference is the in-memory model called
on the same values as dense tensors. The export is run through tfx-bsl's own model handler (its TF1
session loader and its PredictionLog building) and through tf.saved_model.load.

For raw inputs (encoded images, text; models.preparation.preprocessing) the golden values are real PNG/JPEG
bytes and sentences over the vocabulary shipped in the export's assets, and the reference applies
the same preprocessing eagerly before calling the model (models.preparation.export.signature_body), so the
check covers the export's parsing, its assets and lookup-table initialization in both loaders,
classify/regress outputs and passthrough features. TF Serving warmup requests, when the export
has them, are replayed through the signature they name.
"""

import dataclasses
from typing import Dict, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from models.serving import examples as ex
from models.serving.feature_spec import FeatureSpec

RELATIVE_TOLERANCE = 1e-6


@dataclasses.dataclass
class VerificationResult:
    problems: List[str]
    checked_examples: int

    @property
    def ok(self) -> bool:
        return not self.problems


def golden_serialized(spec: FeatureSpec, count: int = 8, seed: int = 0,
                      vocabularies: Optional[Mapping[str, List[str]]] = None):
    rows = ex.golden_values(spec, count, seed, vocabularies)
    return rows, [ex.make_example(r, spec).SerializeToString() for r in rows]


def run_tf2(export_dir: str, serialized: List[bytes], signature: str = "serving_default"
            ) -> Dict[str, np.ndarray]:
    fn = tf.saved_model.load(export_dir).signatures[signature]
    (input_name,) = fn.structured_input_signature[1]
    return {k: v.numpy() for k, v in fn(**{input_name: tf.constant(serialized)}).items()}


def run_tfx_bsl(export_dir: str, serialized: List[bytes], signature: str = "serving_default"
                ) -> Dict[str, np.ndarray]:
    """Runs the batch through tfx-bsl's in-process model handler, as RunInference would."""
    from models.serving.tfx_bsl_call import TfxBslBatchCall

    return TfxBslBatchCall(export_dir, signature)(serialized)


def compare_outputs(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray],
                    label: str, rtol: float = RELATIVE_TOLERANCE) -> List[str]:
    problems = []
    if set(reference) != set(actual):
        return [f"{label}: outputs {sorted(actual)} differ from the model's {sorted(reference)}"]
    for name in sorted(reference):
        ref, got = np.asarray(reference[name]), np.asarray(actual[name])
        if ref.shape != got.shape:
            problems.append(f"{label}: output {name!r} has shape {got.shape}, expected {ref.shape}")
        elif ref.dtype.kind in "fc":
            # relative to the output's scale, so values near zero do not demand exact equality
            scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
            worst = float(np.max(np.abs(got.astype(np.float64) - ref))) / scale if ref.size else 0.0
            if worst > rtol:
                problems.append(
                    f"{label}: output {name!r} differs from the in-memory model by {worst:.2e} "
                    f"relative (tolerance {rtol:.0e})")
        elif not np.array_equal(ref, got):
            problems.append(f"{label}: output {name!r} differs from the in-memory model")
    return problems


def verify_export(export_dir: str, spec: FeatureSpec, reference_call, count: int = 8,
                  seed: int = 0) -> VerificationResult:
    """reference_call maps dense inputs {name: array} to {output: tensor} (the in-memory model)."""
    from models.preparation.preprocessing import read_vocabularies

    try:
        vocabularies = read_vocabularies(export_dir, spec)
    except Exception as e:  # a vocabulary missing from the export's assets is a finding
        return VerificationResult(problems=[f"export assets: {_first_line(e)}"], checked_examples=0)
    rows, serialized = golden_serialized(spec, count, seed, vocabularies)
    try:
        reference = {k: np.asarray(v) for k, v in reference_call(
            {k: tf.constant(v) for k, v in ex.dense_batch(rows, spec).items()}).items()}
    except Exception as e:
        return VerificationResult(problems=[
            f"the in-memory model fails on golden examples generated from the feature spec: "
            f"{type(e).__name__}: {_first_line(e)}"], checked_examples=0)
    problems = []
    for label, runner in (("tf.saved_model.load", run_tf2), ("tfx-bsl TF1 session loader", run_tfx_bsl)):
        try:
            actual = runner(export_dir, serialized)
        except Exception as e:  # a load failure is a finding, reported with the loader's words
            problems.append(f"{label}: {type(e).__name__}: {_first_line(e)}")
            continue
        problems += compare_outputs(reference, actual, label)
    problems += warmup_problems(export_dir)
    return VerificationResult(problems=problems, checked_examples=count)


def warmup_problems(export_dir: str) -> List[str]:
    """TF Serving warmup requests must each run through the signature they name."""
    from models.preparation import warmup

    try:
        for log, outputs in zip(warmup.read_warmup(export_dir), warmup.replay(export_dir)):
            size = len(warmup.request_examples(log)[2])
            wrong = sorted(name for name, value in outputs.items() if value.shape[:1] != (size,))
            if wrong:
                return [f"warmup requests: outputs {wrong} lack a batch axis of {size}"]
    except Exception as e:
        return [f"warmup requests ({warmup.WARMUP_FILE}): {type(e).__name__}: {_first_line(e)}"]
    return []


# the lines TensorFlow puts before what went wrong: its preamble and the traced op's stack frames
_TF_PREAMBLE = ("Graph execution error", "Detected at node", "File \"", "<stack traces unavailable>")


def _first_line(error: Exception) -> str:
    """The first line of the error that says what went wrong, without TensorFlow's preamble."""
    text = str(error).strip()
    for line in text.splitlines():
        if line.strip() and not line.strip().startswith(_TF_PREAMBLE):
            return line.strip()[:500]
    return text[:500]
