"""One measurement in a fresh process: python -m bench.worker MODE MODEL INPUT OUTPUT
[--batch_size N] [--gpu_util] -> JSON on stdout.

MODE is raw (the signature called on prebuilt batches of --batch_size (1024) serialized
examples: the limit), raw-chunked (the same, batched as the fast engine batches: 1024 records
and 512 KiB at most),
tfx-bsl-beam (the pipeline people write by hand around tfx-bsl: ReadFromTFRecord ->
tfx_bsl.public.beam.RunInference -> PredictionLogs as TFRecord, as TFX's BulkInferrer does),
tfx-bsl or fast (the batch_infer pipeline end to end with that engine: TFRecord in, JSON Lines
out, --key_feature id), fast-parquet (fast, Parquet out), fast-gpu (fast with --gpu: GPU batch
sizes and memory growth on the local runner), raw-gpu-batches (raw on those batch sizes),
graph-x2 (the same model twice in parallel as a model graph, fast engine), raw-dense (the
model's dense signature, serving_dense, on prebuilt arrays), fast-dense (batch_infer on that
signature: records parsed into its tensors by the engine), raw-arrays (a dense-input model's
serving_default on prebuilt batches of the arrays in Parquet files' columns), fast-parquet-io
(batch_infer on those Parquet files: --input_format parquet --output_format parquet), or
fast-2-workers (fast on two SDK worker processes: --direct_running_mode=multi_processing
--direct_num_workers=2).
Seconds are measured around the work only; peak RSS is this process's own high-water mark
(VmHWM; for fast-2-workers the launcher's only). --gpu_util adds the GPU's utilisation over the timed section
(bench.gpu_util: nvidia-smi every 0.5 s; for a job, its start-up is inside that section).
"""

import argparse
import glob
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.workloads import KEY_FEATURE  # noqa: E402  (the jobs read each record's key)


def timed(start: float, records: int) -> dict:
    """A measurement that started at start (time.perf_counter) and ends now."""
    end = time.perf_counter()
    return {"seconds": end - start, "records": records, "window": [start, end]}


def measure_raw(model_dir: str, pattern: str, chunk_bytes=None, batch_size: int = 1024) -> dict:
    import tensorflow as tf

    from transforms.records.chunk import split_by_bytes
    from transforms.sources.framing import read_records

    records = []
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as f:
            records.extend(r.data for r in read_records(f))
    batches = [tf.constant(part) for i in range(0, len(records), batch_size)
               for _, part in split_by_bytes(records[i:i + batch_size], chunk_bytes or float("inf"))]
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    fn(examples=batches[0])  # trace and warm up outside the timing
    start = time.perf_counter()
    for batch in batches:
        outputs = fn(examples=batch)
        for value in outputs.values():
            value.numpy()
    return timed(start, len(records))


def measure_raw_arrays(model_dir: str, pattern: str, batch_size: int = 1024) -> dict:
    """A dense-input model's serving_default (a Keras model.export()) called on prebuilt batches
    of the arrays in the Parquet files' columns of its inputs' names (read and made tensors
    before the timing), outputs fetched: raw TF on arrays, the limit for columns in."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    names = sorted(fn.structured_input_signature[1])
    tables = [pq.read_table(path, columns=names) for path in sorted(glob.glob(pattern))]
    columns = {}
    for name in names:
        column = pa.concat_arrays([chunk for t in tables for chunk in t.column(name).chunks])
        width = column.type.list_size  # a fixed-size-list column: one row of width values each
        columns[name] = np.asarray(column.flatten().to_numpy(zero_copy_only=False)).reshape(-1, width)
    records = len(columns[names[0]])
    batches = [{name: tf.constant(values[i:i + batch_size]) for name, values in columns.items()}
               for i in range(0, records, batch_size)]
    fn(**batches[0])  # trace and warm up outside the timing
    start = time.perf_counter()
    for batch in batches:
        for value in fn(**batch).values():
            value.numpy()
    return timed(start, records)


def measure_raw_dense(model_dir: str, pattern: str, batch_size: int = 1024) -> dict:
    """The dense signature models.prepare keeps (serving_dense) called on prebuilt batches of the
    arrays the records hold (parsed and decoded before the timing): raw TF on arrays."""
    import tensorflow as tf

    from models.serving.dense import TensorInputs, signature_inputs, tensor_input_spec
    from models.serving.model import read_feature_spec
    from transforms.sources.framing import read_records

    records = []
    for path in sorted(glob.glob(pattern)):
        with open(path, "rb") as f:
            records.extend(r.data for r in read_records(f))
    inputs = signature_inputs(model_dir, "serving_dense")
    spec = tensor_input_spec(inputs, read_feature_spec(model_dir, "serving_default")[0])
    parse = TensorInputs(spec, list(inputs)).parse
    batches = [{name: tf.constant(value.numpy()) for name, value in parse(tf.constant(records[i:i + batch_size])).items()}
               for i in range(0, len(records), batch_size)]
    fn = tf.saved_model.load(model_dir).signatures["serving_dense"]
    fn(**batches[0])  # trace and warm up outside the timing
    start = time.perf_counter()
    for batch in batches:
        for value in fn(**batch).values():
            value.numpy()
    return timed(start, len(records))


def measure_tfx_bsl_beam(model_dir: str, pattern: str, output: str) -> dict:
    """tfx-bsl's public RunInference in a plain Beam pipeline, on the same runner as ours."""
    import apache_beam as beam
    from tensorflow_serving.apis import prediction_log_pb2
    from tfx_bsl.public.beam import RunInference
    from tfx_bsl.public.proto import model_spec_pb2

    spec = model_spec_pb2.InferenceSpecType(saved_model_spec=model_spec_pb2.SavedModelSpec(
        model_path=model_dir, signature_name=["serving_default"]))
    written = beam.metrics.Metrics.counter("bench", "logs")

    def count(log):
        written.inc()
        return log

    start = time.perf_counter()
    p = beam.Pipeline()
    (p
     | beam.io.ReadFromTFRecord(pattern)
     | RunInference(spec)
     | beam.Map(count)
     | beam.io.WriteToTFRecord(output, coder=beam.coders.ProtoCoder(prediction_log_pb2.PredictionLog)))
    result = p.run()
    result.wait_until_finish()
    measured = timed(start, 0)
    (logs,) = result.metrics().query(beam.metrics.MetricsFilter().with_name("logs"))["counters"]
    return dict(measured, records=logs.committed or logs.attempted)


def measure_pipeline(engine: str, model_dir: str, pattern: str, output: str) -> dict:
    from pipelines import batch_infer

    if engine == "graph-x2":
        models = ["--model", f"first={model_dir}", "--model", f"second={model_dir}", "--engine", "fast"]
    elif engine == "fast-gpu":  # the GPU settings of --gpu (batch sizes, memory growth) on the local runner
        models = ["--model", model_dir, "--engine", "fast", "--gpu", "nvidia-local"]
    elif engine == "fast-parquet":
        models = ["--model", model_dir, "--engine", "fast", "--output_format", "parquet"]
    elif engine == "fast-parquet-io":  # columns in, columns out: the job as it stands (default engine)
        models = ["--model", model_dir, "--input_format", "parquet", "--output_format", "parquet"]
    elif engine == "fast-2-workers":  # two SDK worker processes, chunks redistributed (bench.workers)
        models = ["--model", model_dir, "--engine", "fast", "--direct_running_mode=multi_processing",
                  "--direct_num_workers=2"]
    elif engine == "fast-dense":  # the dense signature, fed by the spec models.prepare wrote (raw images too)
        models = ["--model", model_dir, "--signature", "serving_dense",
                  "--feature_spec", os.path.join(model_dir, "assets.extra", "feature_spec.json")]
    else:
        models = ["--model", model_dir, "--engine", engine]
    start = time.perf_counter()
    _, counters = batch_infer.run(["--input", pattern, "--output", output, "--key_feature", KEY_FEATURE] + models,
                                  save_main_session=False)
    measured = timed(start, 0)
    if counters.get("predictions_written", 0) != counters.get("records_read", -1):
        raise RuntimeError(f"lost records: {counters}")
    return dict(measured, records=counters["predictions_written"])


def peak_rss_mb() -> float:
    """This process's own high-water RSS: /proc/self/status's VmHWM, that of its memory since the
    exec. (ru_maxrss also keeps the launcher's peak, which a vfork()ed child takes over at exec:
    a bench.run that had just built ResNet50 made every worker look 2.7 GB.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, model_dir: str, pattern: str, output: str, batch_size: int) -> dict:
    if mode == "raw":
        return measure_raw(model_dir, pattern, batch_size=batch_size)
    if mode == "raw-chunked":  # the engine's chunks, whatever the workload's raw batch
        from transforms.records.chunk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE

        return measure_raw(model_dir, pattern, DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE)
    if mode == "raw-dense":
        return measure_raw_dense(model_dir, pattern, batch_size)
    if mode == "raw-arrays":
        return measure_raw_arrays(model_dir, pattern, batch_size)
    if mode == "raw-gpu-batches":  # raw TF on the batches a job with --gpu forms
        from transforms.runtime.gpu import GPU_BATCH

        return measure_raw(model_dir, pattern, GPU_BATCH.max_batch_bytes, GPU_BATCH.max_batch_size)
    import io
    from contextlib import redirect_stdout

    with redirect_stdout(io.StringIO()):
        if mode == "tfx-bsl-beam":
            return measure_tfx_bsl_beam(model_dir, pattern, output)
        return measure_pipeline(mode, model_dir, pattern, output)


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("mode")
    parser.add_argument("model_dir")
    parser.add_argument("pattern")
    parser.add_argument("output")
    parser.add_argument("--batch_size", type=int, default=1024, help="the raw modes' batch")
    parser.add_argument("--gpu_util", action="store_true", help="sample GPU utilisation (nvidia-smi)")
    args = parser.parse_args(argv)
    if args.gpu_util:
        from bench.gpu_util import GpuUtilization

        with GpuUtilization() as util:
            result = measure(args.mode, args.model_dir, args.pattern, args.output, args.batch_size)
        result["gpu_util"] = util.summary(*result["window"])
        result["gpu_util_problem"] = util.problem
    else:
        result = measure(args.mode, args.model_dir, args.pattern, args.output, args.batch_size)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
