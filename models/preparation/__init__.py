"""What model preparation needs (python -m models.prepare): exporting serialized-tf.Example
signatures beside a model's own, raw-input preprocessing, classify/regress method signatures,
warmup requests and verification. Built on models.serving; jobs never import it."""
