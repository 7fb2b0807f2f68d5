"""One measurement in a fresh process: python -m bench.worker MODE MODEL INPUT OUTPUT -> JSON on stdout.

MODE is raw (the signature called on prebuilt batches of 1024 serialized examples: the limit),
raw-chunked (the same, batched as the fast engine batches: 1024 records and 512 KiB at most),
tfx-bsl-beam (the pipeline people write by hand around tfx-bsl: ReadFromTFRecord ->
tfx_bsl.public.beam.RunInference -> PredictionLogs as TFRecord, as TFX's BulkInferrer does),
tfx-bsl or fast (the batch_infer pipeline end to end with that engine: TFRecord in, JSON Lines
out, --key_feature id), fast-parquet (fast, Parquet out), fast-gpu (fast with --gpu: GPU batch
sizes and memory growth on the local runner), raw-gpu-batches (raw on those batch sizes),
graph-x2 (the same model twice in parallel as a model graph, fast engine), raw-dense (the
model's dense signature, serving_dense, on prebuilt arrays), fast-dense (batch_infer on that
signature: records parsed into its tensors by the engine), or fast-2-workers
(fast on two SDK worker processes: --direct_running_mode=multi_processing --direct_num_workers=2).
Seconds are measured around the work only; peak RSS is this process's high-water mark (for
fast-2-workers the launcher's only).
"""

import glob
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.workloads import KEY_FEATURE  # noqa: E402  (the jobs read each record's key)


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
    return {"seconds": time.perf_counter() - start, "records": len(records)}


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
    return {"seconds": time.perf_counter() - start, "records": len(records)}


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
    seconds = time.perf_counter() - start
    (logs,) = result.metrics().query(beam.metrics.MetricsFilter().with_name("logs"))["counters"]
    return {"seconds": seconds, "records": logs.committed or logs.attempted}


def measure_pipeline(engine: str, model_dir: str, pattern: str, output: str) -> dict:
    from pipelines import batch_infer

    if engine == "graph-x2":
        models = ["--model", f"first={model_dir}", "--model", f"second={model_dir}", "--engine", "fast"]
    elif engine == "fast-gpu":  # the GPU settings of --gpu (batch sizes, memory growth) on the local runner
        models = ["--model", model_dir, "--engine", "fast", "--gpu", "nvidia-local"]
    elif engine == "fast-parquet":
        models = ["--model", model_dir, "--engine", "fast", "--output_format", "parquet"]
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
    seconds = time.perf_counter() - start
    if counters.get("predictions_written", 0) != counters.get("records_read", -1):
        raise RuntimeError(f"lost records: {counters}")
    return {"seconds": seconds, "records": counters["predictions_written"]}


def main(argv):
    mode, model_dir, pattern, output = argv
    if mode == "raw":
        result = measure_raw(model_dir, pattern)
    elif mode == "raw-chunked":
        from transforms.records.chunk import DEFAULT_CHUNK_BYTES

        result = measure_raw(model_dir, pattern, DEFAULT_CHUNK_BYTES)
    elif mode == "raw-dense":
        result = measure_raw_dense(model_dir, pattern)
    elif mode == "raw-gpu-batches":  # raw TF on the batches a job with --gpu forms
        from transforms.runtime.gpu import GPU_BATCH

        result = measure_raw(model_dir, pattern, GPU_BATCH.max_batch_bytes, GPU_BATCH.max_batch_size)
    else:
        import io
        from contextlib import redirect_stdout

        with redirect_stdout(io.StringIO()):
            if mode == "tfx-bsl-beam":
                result = measure_tfx_bsl_beam(model_dir, pattern, output)
            else:
                result = measure_pipeline(mode, model_dir, pattern, output)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
