"""Runnable entry points: `python -m pipelines.batch_infer` (and, later, stream_infer).

TensorFlow's C++ log level is set by models/__init__.py, which every entry point imports first.
"""
