"""python -m bench.profile_steps: where a chunk's time goes, step by step, on model A.

Each step of the batch job's hot path runs alone over the same 1024-record chunks of A (one
file of 125k records, --key_feature id), and its CPU time (all threads of this process) and wall
time per chunk are printed: reading (TensorFlow's C++ record reader), the key parse, the model
call, and formatting rows as JSON Lines or as Arrow tables written to Parquet. The job runs these on two
threads (bench.run measures the whole); on a machine with C cores its rate is bounded by
C / (CPU per chunk) chunks a second, and by the busiest thread. Prints JSON too
(bench/results/profile_steps.json).
"""

import argparse
import io
import json
import os
import sys
import time

from bench import workloads
from bench.run import ROOT


def per_chunk(step, chunks: int, repeats: int = 3) -> dict:
    """The least CPU and wall time per chunk of `repeats` runs of step()."""
    step()  # warm up (traces, caches)
    best_cpu = best_wall = float("inf")
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        step()
        best_cpu = min(best_cpu, (time.process_time() - cpu) / chunks * 1e3)
        best_wall = min(best_wall, (time.perf_counter() - wall) / chunks * 1e3)
    return {"cpu_ms": best_cpu, "wall_ms": best_wall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_steps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work"), help="models and data cache")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    import glob

    import pyarrow as pa

    from transforms.graph.model import parallel_graph
    from transforms.records.chunk import ModelResult, ScoredChunk
    from transforms.records.keys import keys_by_feature
    from transforms.records.rows import rows_block
    from models.serving.engines import load_fast
    from transforms.sinks.parquet import ROW_GROUP_ROWS, _RowGroupWriter, chunk_table, parquet_schema
    from transforms.sources.tfrecord import iter_chunks
    from models.serving.model import load_serving_model

    workload = workloads.WORKLOADS["A"]
    model_dir = workloads.ensure_model(workload, args.work)
    path = sorted(glob.glob(workloads.ensure_data(workload, args.work, workloads.SHARD_RECORDS)))[0]
    call = load_fast(model_dir, "serving_default")
    graph = parallel_graph([load_serving_model(model_dir)], "fast")
    name = graph.nodes[0].name

    def read():  # the job's own reader (its chunks of 1024 small records are not cut by bytes)
        return [records for _, records in iter_chunks(path, 1024)]

    chunks = read()
    count = len(chunks)
    keys = [keys_by_feature(c, workloads.KEY_FEATURE) for c in chunks]
    outputs = [call(c) for c in chunks]
    scored = [ScoredChunk(k, c, {name: ModelResult(list(range(len(c))), o)}, [])
              for k, c, o in zip(keys, chunks, outputs)]
    schema = parquet_schema(graph)

    def write_parquet(tables):
        writer = _RowGroupWriter(io.BytesIO(), schema, "snappy", ROW_GROUP_ROWS)
        for table in tables:
            writer.add(table)
        writer.close()
    steps = {
        "read (C++ record reader, chunks of 1024)": lambda: read(),
        "key parse (--key_feature)": lambda: [keys_by_feature(c, workloads.KEY_FEATURE) for c in chunks],
        "model call (the signature on the chunk's tensor)": lambda: [call(c) for c in chunks],
        "JSON Lines (rows_block)": lambda: [rows_block(s.keys, s.models) for s in scored],
        "Parquet (Arrow tables, written with snappy)": lambda: write_parquet([chunk_table(s, schema) for s in scored]),
    }
    results = {}
    print(f"model A, {count} chunks of 1024 records, per chunk (least of 3 runs):")
    for label, step in steps.items():
        results[label] = per_chunk(step, count)
        print(f"  {label:50s} CPU {results[label]['cpu_ms']:5.2f} ms   wall {results[label]['wall_ms']:5.2f} ms",
              flush=True)
    jsonl = sum(r["cpu_ms"] for label, r in results.items() if not label.startswith("Parquet"))
    parquet = sum(r["cpu_ms"] for label, r in results.items() if not label.startswith("JSON"))
    cores = os.cpu_count() or 1
    model_wall = results["model call (the signature on the chunk's tensor)"]["wall_ms"]
    summary = {"cpu_ms_per_chunk_jsonl": jsonl, "cpu_ms_per_chunk_parquet": parquet, "cores": cores,
               "bound_vs_raw_jsonl": model_wall / (jsonl / cores), "bound_vs_raw_parquet": model_wall / (parquet / cores),
               "steps": results, "arrow": pa.__version__}
    print(f"CPU per chunk: {jsonl:.2f} ms with JSON Lines, {parquet:.2f} ms with Parquet; on {cores} cores "
          f"that bounds the job at {summary['bound_vs_raw_jsonl']:.2f} / {summary['bound_vs_raw_parquet']:.2f} "
          f"of raw TF (the model call alone: {model_wall:.2f} ms a chunk), before Beam's own cost")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile_steps.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)
    sys.exit(main())
