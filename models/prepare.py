"""python -m models.prepare --model PATH --output DIR [--version N] [--feature_spec spec.json]

Exports a Keras 3 model (.keras) or a dense-input SavedModel with a serialized-tf.Example
`serving_default` signature into DIR/<version>/, verifies the export through both loaders, and
only then moves it into place. Exits non-zero, naming the problem, when anything fails.

Raw inputs, preprocessed inside the signature (models.preparation.preprocessing):
    --image_input pixels=image --image_scale unit|symmetric|none
    --text_input tokens=text --vocab vocab.txt
Features copied from each input example to outputs of the same name (predict method only):
    --passthrough id,uri      a feature the model does not read is a string of shape [] with
                              default "" unless --feature_spec declares it; a feature of shape []
                              comes out as [batch, 1] (rows hold a one-item list, "id": ["p1"]),
                              since tfx-bsl cannot split per-example string scalars
Signature method (models.preparation.signature_methods): --method predict|classify|regress [--class_labels a,b,c]
TF Serving warmup requests from the golden examples go to assets.extra/tf_serving_warmup_requests.
"""

import sys

if __name__ == "__main__":  # before TensorFlow loads, so its start-up lines stay off the console
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)


import os
import tempfile
from typing import Mapping, NamedTuple, Optional, Sequence, Union

from models import cli
from models.tf_console import console_logging
from models.serving.feature_spec import (
    FeatureSpec, FeatureSpecError, describe, load_spec_file, override_spec, with_passthrough)

Pairs = Union[None, Mapping[str, str], Sequence[str]]


def build_spec(inputs, overrides: Optional[FeatureSpec] = None, images: Optional[Mapping[str, str]] = None,
               image_scale: Optional[str] = None, texts: Optional[Mapping[str, str]] = None,
               vocabularies: Optional[Mapping[str, Sequence[str]]] = None,
               passthrough: Sequence[str] = ()) -> FeatureSpec:
    """The export's feature spec: derived from the model inputs, overridden, raw features in
    place of preprocessed inputs, passthrough features marked (and added)."""
    from models.preparation import export
    from models.preparation.preprocessing import raw_spec

    images, texts = dict(images or {}), dict(texts or {})
    spec = export.derive_spec(inputs)
    overrides = tuple(overrides or ())
    preprocessed = sorted({f.name for f in overrides} & (set(images) | set(texts)))
    if preprocessed:
        raise FeatureSpecError(f"the feature spec overrides {preprocessed}, which preprocessing feeds "
                               "from raw features")
    input_names = {f.name for f in spec}
    declared = [f for f in overrides if f.name not in input_names]
    if declared and not passthrough:
        override_spec(spec, overrides)  # raises: names that are not model inputs
    spec = override_spec(spec, [f for f in overrides if f.name in input_names])
    spec = raw_spec(spec, inputs, images, image_scale, texts, vocabularies or {})
    if passthrough or declared:
        spec = with_passthrough(spec, passthrough, declared)
    return spec


def prepare_model(source, output_base: str, version: Optional[int] = None,
                  feature_spec: Optional[FeatureSpec] = None, verify_count: int = 8, *,
                  image_inputs: Pairs = None, image_scale: Optional[str] = None,
                  text_inputs: Pairs = None, vocab: Union[None, str, Mapping[str, str], Sequence[str]] = None,
                  passthrough: Union[str, Sequence[str]] = (), method: str = "predict",
                  class_labels: Optional[Sequence[str]] = None, warmup: bool = True) -> str:
    """Exports and verifies source (a SourceModel, a Keras model or a path); returns the version dir.

    image_inputs / text_inputs map model input -> raw feature ({"pixels": "image"} or
    ["pixels=image"]); vocab is one path for every text input or {input: path}. Raises
    VerificationError when the written export does not reproduce the in-memory model, and
    TakesExamplesError for a SavedModel that already takes serialized tf.Example.
    """
    import tensorflow as tf

    from models.preparation import export, preprocessing, signature_methods

    source = _source_model(source)
    method = signature_methods.check_method(method)
    passthrough = _passthrough_features(passthrough, method)
    images = preprocessing.parse_pairs(image_inputs, "--image_input")
    texts = preprocessing.parse_pairs(text_inputs, "--text_input")
    vocab_files = preprocessing.vocab_paths(vocab, list(texts))
    vocabularies = {name: preprocessing.read_vocab(path) for name, path in vocab_files.items()}
    spec = build_spec(source.inputs, feature_spec, images, image_scale, texts, vocabularies, passthrough)
    tf.io.gfile.makedirs(output_base)
    version = export.choose_version(output_base, version)
    staged = export.staging_dir(output_base, version)
    try:
        _export_and_verify(source, spec, staged, vocabularies, bool(images or texts),
                           _Signature(method, class_labels, warmup, verify_count, output_base))
        return export.promote(staged, output_base, version)
    finally:
        export.discard(staged)


class TakesExamplesError(ValueError):
    """The SavedModel given already takes serialized tf.Example: the jobs score it as it is."""


def _source_model(source):
    """source as a models.preparation.export.SourceModel; a SavedModel path that already takes serialized
    tf.Example is refused (TakesExamplesError) before TensorFlow loads it."""
    from models.preparation import export
    from models.serving import layout
    from models.serving.signature_spec import examples_input

    if isinstance(source, export.SourceModel):
        return source
    if not isinstance(source, str):
        return export.from_keras(source)
    if layout.is_saved_model_dir(source):
        name = examples_input(source, export.SERVING_SIGNATURE)
        if name is not None:
            raise TakesExamplesError(
                f"{source} already takes serialized tf.Example (signature {export.SERVING_SIGNATURE!r}, input "
                f"{name!r}): the jobs score it as it is (--model {source}), nothing to prepare; "
                f"python -m models.inspect {source} says which engines run it")
    return export.load_source_model(source)


def _passthrough_features(passthrough: Union[str, Sequence[str]], method: str) -> list:
    """--passthrough as a list of names (a comma-separated string or a list); predict only."""
    from models.preparation import signature_methods

    names = [p.strip() for p in passthrough.split(",")] if isinstance(passthrough, str) else list(passthrough)
    names = [p for p in names if p]
    if names and method != signature_methods.PREDICT:
        raise signature_methods.SignatureMethodError(
            f"--passthrough needs --method predict: tfx-bsl and TF Serving allow no extra outputs in a "
            f"{method} signature")
    return names


class _Signature(NamedTuple):
    """How prepare_model writes the serving signature and checks it."""
    method: str
    class_labels: Optional[Sequence[str]]
    warmup: bool
    verify_count: int
    output_base: str


def _export_and_verify(source, spec: FeatureSpec, staged: str, vocabularies: Mapping[str, Sequence[str]],
                       preprocessed: bool, how: _Signature) -> None:
    """Writes the export to staged (vocabularies as assets, warmup requests) and verifies it;
    raises VerificationError when it does not reproduce the in-memory model."""
    from models.preparation import export, preprocessing, signature_methods, warmup as warmup_requests
    from models.preparation.verify import golden_serialized, verify_export

    with tempfile.TemporaryDirectory() as assets:
        # normalized copies of the vocabularies, copied into the export as assets
        files = {name: preprocessing.write_vocab(words, os.path.join(assets, preprocessing.vocab_asset_name(name)))
                 for name, words in vocabularies.items()}
        preprocessor = preprocessing.Preprocessor(spec, files) if preprocessed else None
        body = export.signature_body(source, spec, preprocessor, how.method, how.class_labels)
        export.write_export(source, spec, staged, body, signature_methods.input_key(how.method),
                            preprocessor.resources if preprocessor else ())
        if how.method != signature_methods.PREDICT:
            signature_methods.set_method_name(staged, export.SERVING_SIGNATURE, how.method)
        if how.warmup:
            _, serialized = golden_serialized(spec, how.verify_count, 0, preprocessing.read_vocabularies(staged, spec))
            warmup_requests.write_warmup(staged, warmup_requests.warmup_logs(
                serialized, how.method, export.SERVING_SIGNATURE, os.path.basename(how.output_base.rstrip("/"))))
        result = verify_export(staged, spec, body, count=how.verify_count)
    if not result.ok:
        raise VerificationError(result.problems)


class VerificationError(RuntimeError):
    def __init__(self, problems):
        super().__init__("export verification failed:\n  - " + "\n  - ".join(problems))
        self.problems = problems


def _comma_list(value: Optional[str]) -> list:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def argument_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m models.prepare", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help=".keras file or SavedModel directory (dense inputs)")
    parser.add_argument("--output", required=True, help="base directory; the export goes to OUTPUT/<version>")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--feature_spec", help="JSON file overriding derived features (dtype, shape, default)")
    parser.add_argument("--image_input", action="append", metavar="INPUT=FEATURE",
                        help="feed model input INPUT from encoded JPEG/PNG bytes in FEATURE (repeatable)")
    parser.add_argument("--image_scale", choices=("unit", "symmetric", "none"),
                        help="pixel scaling after decoding: unit 0..1, symmetric -1..1, none 0..255")
    parser.add_argument("--text_input", action="append", metavar="INPUT=FEATURE",
                        help="feed model input INPUT (token ids) from the text in FEATURE (repeatable)")
    parser.add_argument("--vocab", action="append", metavar="[INPUT=]PATH",
                        help="vocabulary, one word per line (ids: pad 0, unknown 1, line i -> i + 2)")
    parser.add_argument("--passthrough", help="comma-separated features copied to outputs of the same name")
    parser.add_argument("--method", default="predict", choices=("predict", "classify", "regress"),
                        help="serving signature method (default predict)")
    parser.add_argument("--class_labels", help="classify: comma-separated class labels (default 0..n-1)")
    parser.add_argument("--no_warmup", action="store_true", help="write no TF Serving warmup requests")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    console_logging(["--verbose"] if args.verbose else [])
    from models.preparation.signature_methods import SignatureMethodError

    try:
        spec = load_spec_file(args.feature_spec) if args.feature_spec else None
        if not os.path.exists(args.model) and not args.model.startswith("gs://"):
            raise FileNotFoundError(f"--model {args.model} does not exist")
        version_dir = prepare_model(
            args.model, args.output, args.version, spec, image_inputs=args.image_input,
            image_scale=args.image_scale, text_inputs=args.text_input, vocab=args.vocab,
            passthrough=_comma_list(args.passthrough), method=args.method,
            class_labels=_comma_list(args.class_labels) or None, warmup=not args.no_warmup)
    except TakesExamplesError as e:  # not a failure of prepare: the wrong tool for this model
        print(f"models.prepare: error: {e}", file=sys.stderr)
        return 2
    except (VerificationError, FeatureSpecError, SignatureMethodError, FileNotFoundError, FileExistsError,
            ValueError) as e:
        print(f"models.prepare: error: {e}", file=sys.stderr)
        return 1
    from models.serving.model import read_feature_spec

    written_spec, _ = read_feature_spec(version_dir, "serving_default")
    print(f"exported and verified: {version_dir}")
    print("feature spec:\n" + describe(written_spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
