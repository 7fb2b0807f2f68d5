"""Runnable entry points: `python -m pipelines.batch_infer` (and, later, stream_infer)."""
