"""Runnable entry points: `python -m pipelines.batch_infer` (and, later, stream_infer)."""

import os

# TensorFlow's C++ info and warning lines (CPU features, CUDA probing, a failed batch before it is
# retried record by record) drown a job's own output; errors still show. Set before TF loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
