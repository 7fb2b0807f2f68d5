"""python -m models.prepare --model PATH --output DIR [--version N] [--feature_spec spec.json]

Exports a Keras 3 model (.keras) or a dense-input SavedModel with a serialized-tf.Example
`serving_default` signature into DIR/<version>/, verifies the export through both loaders, and
only then moves it into place. Exits non-zero, naming the problem, when anything fails.
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from models.feature_spec import FeatureSpec, FeatureSpecError, describe, load_spec_file, override_spec


def prepare_model(source, output_base: str, version: Optional[int] = None,
                  feature_spec: Optional[FeatureSpec] = None, verify_count: int = 8) -> str:
    """Exports and verifies source (a SourceModel, a Keras model or a path); returns the version dir.

    Raises VerificationError when the written export does not reproduce the in-memory model.
    """
    import tensorflow as tf

    from models import export
    from models.verify import verify_export

    if isinstance(source, str):
        source = export.load_source_model(source)
    elif not isinstance(source, export.SourceModel):
        source = export.from_keras(source)
    spec = export.derive_spec(source.inputs)
    if feature_spec is not None:
        spec = override_spec(spec, feature_spec)
    tf.io.gfile.makedirs(output_base)
    version = export.choose_version(output_base, version)
    staged = export.staging_dir(output_base, version)
    try:
        export.write_export(source, spec, staged)
        result = verify_export(staged, spec, source.call, count=verify_count)
        if not result.ok:
            raise VerificationError(result.problems)
        return export.promote(staged, output_base, version)
    finally:
        export.discard(staged)


class VerificationError(RuntimeError):
    def __init__(self, problems):
        super().__init__("export verification failed:\n  - " + "\n  - ".join(problems))
        self.problems = problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.prepare", description=__doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help=".keras file or SavedModel directory (dense inputs)")
    parser.add_argument("--output", required=True, help="base directory; the export goes to OUTPUT/<version>")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--feature_spec", help="JSON file overriding derived features (dtype, shape, default)")
    args = parser.parse_args(argv)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        spec = load_spec_file(args.feature_spec) if args.feature_spec else None
        if not os.path.exists(args.model) and not args.model.startswith("gs://"):
            raise FileNotFoundError(f"--model {args.model} does not exist")
        version_dir = prepare_model(args.model, args.output, args.version, spec)
    except (VerificationError, FeatureSpecError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"models.prepare: error: {e}", file=sys.stderr)
        return 1
    from models.serving_model import read_feature_spec

    written_spec, _ = read_feature_spec(version_dir, "serving_default")
    print(f"exported and verified: {version_dir}")
    print("feature spec:\n" + describe(written_spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
