"""Model preparation: export Keras / SavedModel models with serialized-tf.Example signatures."""

import os

# Quiet TensorFlow's C++ info and warning lines for our CLIs; errors still show. Set before TF loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
