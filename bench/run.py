"""python -m bench.run: throughput and memory of raw TF, tfx-bsl's RunInference, and our job.

Every measurement runs in a fresh process (bench.worker), interleaved raw / raw-chunked /
tfx-bsl-beam / tfx-bsl / fast / fast-parquet / graph-x2 / raw-dense / fast-dense per repeat. "vs tfx-bsl" is against
tfx-bsl-beam, the pipeline people write by hand around tfx_bsl.public.beam.RunInference. Our jobs
read each record's key (--key_feature id). graph-x2 runs the model twice in parallel as a model
graph (two outputs per row), so its ratios count model calls: 2 x examples/s against raw TF.
Pipeline throughput subtracts the fixed start-up cost measured on a tiny input in the same
repeat: (N - n_tiny) / (t_N - t_tiny). Results: bench/results/results.{json,md}.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from bench import workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("raw", "raw-chunked", "tfx-bsl-beam", "tfx-bsl", "fast", "fast-parquet", "graph-x2", "raw-dense",
         "fast-dense")
MODEL_CALLS_PER_RECORD = {"graph-x2": 2}
TINY = {"A": 1024, "B": 64}  # the start-up probe: small next to every measured input

# records per mode; tfx-bsl is ~30x slower than the fast engine on A, so it gets less data
SIZES = {
    "full": {"A": {"raw": 200_000, "raw-chunked": 200_000, "tfx-bsl-beam": 100_000, "tfx-bsl": 100_000,
                   "fast": 1_000_000, "fast-parquet": 1_000_000, "graph-x2": 500_000, "raw-dense": 200_000,
                   "fast-dense": 1_000_000},
             "B": {"raw": 5_000, "raw-chunked": 5_000, "tfx-bsl-beam": 5_000, "tfx-bsl": 5_000, "fast": 5_000,
                   "fast-parquet": 5_000, "graph-x2": 5_000, "raw-dense": 5_000, "fast-dense": 5_000}},
    "quick": {"A": {"raw": 20_000, "raw-chunked": 20_000, "tfx-bsl-beam": 10_000, "tfx-bsl": 10_000,
                    "fast": 50_000, "fast-parquet": 50_000, "graph-x2": 25_000, "raw-dense": 20_000,
                    "fast-dense": 50_000},
              "B": {"raw": 1_000, "raw-chunked": 1_000, "tfx-bsl-beam": 1_000, "tfx-bsl": 1_000, "fast": 1_000,
                    "fast-parquet": 1_000, "graph-x2": 1_000, "raw-dense": 1_000, "fast-dense": 1_000}},
}


def run_worker(mode: str, model_dir: str, pattern: str, work: str) -> dict:
    output = os.path.join(work, "out", mode)
    shutil.rmtree(os.path.dirname(output), ignore_errors=True)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "bench.worker", mode, model_dir, pattern,
                           os.path.join(output, "pred")],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.worker {mode} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(os.path.dirname(output), ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_mode(mode: str, model_dir: str, pattern: str, tiny: str, work: str) -> dict:
    """One run of a mode on pattern, each in a fresh process: for a pipeline mode, the fixed
    start-up measured on the tiny input is subtracted: (N - n_tiny) / (t_N - t_tiny)."""
    big = run_worker(mode, model_dir, pattern, work)
    startup, tiny_records = 0.0, 0
    if not mode.startswith("raw"):  # raw modes are timed around the calls alone
        small = run_worker(mode, model_dir, tiny, work)
        startup, tiny_records = small["seconds"], small["records"]
    return {"records": big["records"], "seconds": big["seconds"], "startup_seconds": startup,
            "examples_per_s": (big["records"] - tiny_records) / max(big["seconds"] - startup, 1e-9),
            "peak_rss_mb": big["peak_rss_mb"]}


def describe_run(run: dict) -> str:
    return (f"{run['records']:>9,} records {run['seconds']:7.1f} s (start-up {run['startup_seconds']:4.1f} s) "
            f"-> {run['examples_per_s']:>10,.0f} ex/s, peak RSS {run['peak_rss_mb']:,.0f} MB")


def measure(workload, sizes, repeats, work, log):
    model_dir = workloads.ensure_model(workload, work)
    data = {mode: workloads.ensure_data(workload, work, n) for mode, n in sizes.items()}
    tiny = workloads.ensure_data(workload, work, TINY[workload.name], tag="-tiny")
    runs = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        for mode in MODES:
            runs[mode].append(measure_mode(mode, model_dir, data[mode], tiny, work))
            log(f"  {workload.name} repeat {repeat + 1} {mode:8s} " + describe_run(runs[mode][-1]))
    summary = {}
    for mode in MODES:
        summary[mode] = {
            "examples_per_s": statistics.median(r["examples_per_s"] for r in runs[mode]),
            "startup_seconds": statistics.median(r["startup_seconds"] for r in runs[mode]),
            "records": runs[mode][0]["records"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[mode]),
        }
    raw, raw_chunked, tfx_beam, tfx, fast, parquet, graph, raw_dense, fast_dense = (
        summary[m]["examples_per_s"] for m in MODES)
    summary["ratios"] = {"fast_dense_vs_raw_dense": fast_dense / raw_dense, "fast_dense_vs_raw": fast_dense / raw,
                         "fast_vs_raw": fast / raw, "fast_vs_tfx_bsl": fast / tfx_beam,
                         "fast_parquet_vs_raw": parquet / raw, "fast_parquet_vs_tfx_bsl": parquet / tfx_beam,
                         "tfx_bsl_engine_vs_tfx_bsl": tfx / tfx_beam, "tfx_bsl_vs_raw": tfx_beam / raw,
                         "fast_vs_raw_same_batches": fast / raw_chunked,
                         "graph_x2_model_calls_vs_raw": 2 * graph / raw, "graph_x2_vs_fast": graph / fast}
    return {"workload": workload.description, "summary": summary, "runs": runs}


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import apache_beam
    import tensorflow
    import tfx_bsl

    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "beam": apache_beam.__version__, "tensorflow": tensorflow.__version__,
            "tfx_bsl": tfx_bsl.__version__, "runner": "DirectRunner (in-process)"}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured {results['date']} on {m['cpus']} cores ({m['cpu']}), {m['runner']}, "
             f"Beam {m['beam']}, TF {m['tensorflow']}, tfx-bsl {m['tfx_bsl']}; median of "
             f"{results['repeats']} interleaved repeats, start-up subtracted.", "",
             "| workload | mode | records | examples/s | vs raw TF | vs tfx-bsl | start-up s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results["workloads"].items():
        s = res["summary"]
        raw, tfx = s["raw"]["examples_per_s"], s["tfx-bsl-beam"]["examples_per_s"]
        for mode in MODES:
            r = s[mode]
            calls = r["examples_per_s"] * MODEL_CALLS_PER_RECORD.get(mode, 1)
            lines.append(f"| {name}: {res['workload']} | {mode} | {r['records']:,} | "
                         f"{r['examples_per_s']:,.0f} | {calls / raw:.2f} | "
                         f"{calls / tfx:.1f}x | {r['startup_seconds']:.1f} | "
                         f"{r['peak_rss_mb']:,.0f} |")
    lines.append("\ntfx-bsl-beam: tfx_bsl.public.beam.RunInference in a plain Beam pipeline (TFRecord in, "
                 "PredictionLogs out), the \"vs tfx-bsl\" baseline; tfx-bsl and fast: python -m "
                 "pipelines.batch_infer with that engine (TFRecord in, JSON Lines out, --key_feature id); "
                 "fast-parquet: the same with --output_format parquet; graph-x2: the model "
                 "twice in parallel as a graph (one row with both outputs per record); its ratios count "
                 "model calls (2 x examples/s); raw-dense: the model's dense signature (serving_dense) on "
                 "prebuilt arrays; fast-dense: batch_infer on that signature, the engine parsing the same "
                 "TFRecords into its tensors.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat (a smoke run)")
    parser.add_argument("--workloads", default="A,B")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work"), help="models and data cache")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.quick else 3)
    os.makedirs(args.out, exist_ok=True)
    log = lambda text: print(text, flush=True)  # noqa: E731
    results = {"date": time.strftime("%Y-%m-%d"), "repeats": repeats, "machine": machine(), "workloads": {}}
    for name in args.workloads.split(","):
        log(f"workload {name}: {workloads.WORKLOADS[name].description}")
        results["workloads"][name] = measure(workloads.WORKLOADS[name], sizes[name], repeats, args.work, log)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
