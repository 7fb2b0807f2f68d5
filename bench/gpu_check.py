"""python -m bench.gpu_check: the batch job against raw TensorFlow on this machine's GPU, model B.

One command, a few minutes: builds model B (the CNN of bench/workloads.py) and its data, then,
interleaved per repeat and each in a fresh process (bench.worker):
- raw-gpu-batches: the signature called on batches of the sizes a job with --gpu forms
  (transforms.runtime.gpu.GPU_BATCH), outputs fetched: the limit on this GPU;
- fast-gpu: `python -m pipelines.batch_infer --gpu ...` on the local runner (GPU batch sizes,
  memory growth), TFRecord in, JSON Lines out, --key_feature id; start-up (measured on a tiny
  input in the same repeat) subtracted.
Prints the median rates and their ratio (target: 0.95 or more), and writes
bench/results/gpu_check.{json,md}. Exits 2 when TensorFlow sees no GPU (--allow_cpu runs it anyway,
to try the script).
"""

import argparse
import json
import os
import statistics
import sys
import time

from bench import workloads
from bench.run import ROOT, TINY, describe_run, machine, measure_mode

MODES = ("raw-gpu-batches", "fast-gpu")


def gpu_names():
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def nvidia_smi() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--allow_cpu", action="store_true", help="run without a GPU (to try the script)")
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work"), help="models and data cache")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    gpus = gpu_names()
    if not gpus and not args.allow_cpu:
        print("bench.gpu_check: TensorFlow sees no GPU here (pass --allow_cpu to run it on CPU anyway)",
              file=sys.stderr)
        return 2
    workload = workloads.WORKLOADS["B"]
    model_dir = workloads.ensure_model(workload, args.work)
    data = workloads.ensure_data(workload, args.work, args.records)
    tiny = workloads.ensure_data(workload, args.work, TINY["B"], tag="-tiny")
    print(f"gpu_check: {gpus or 'no GPU'} {nvidia_smi()}; model B, {args.records:,} records "
          f"(set-up {time.perf_counter() - started:.0f} s)", flush=True)
    rates = {mode: [] for mode in MODES}
    startups = []
    for repeat in range(args.repeats):
        for mode in MODES:
            run = measure_mode(mode, model_dir, data, tiny, args.work)
            rates[mode].append(run["examples_per_s"])
            if not mode.startswith("raw"):
                startups.append(run["startup_seconds"])
            print(f"  repeat {repeat + 1} {mode:16s} " + describe_run(run), flush=True)
    raw, job = (statistics.median(rates[m]) for m in MODES)
    result = {"date": time.strftime("%Y-%m-%d"), "machine": dict(machine(), gpus=gpus, nvidia_smi=nvidia_smi()),
              "records": args.records, "repeats": args.repeats, "raw_examples_per_s": raw,
              "job_examples_per_s": job, "job_vs_raw": job / raw, "job_startup_s": statistics.median(startups),
              "runs": rates, "seconds": time.perf_counter() - started}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=2)
    line = (f"Model B on {result['machine']['nvidia_smi'] or 'CPU'}, {args.records:,} records, median of "
            f"{args.repeats}: raw TF {raw:,.0f} ex/s, the job {job:,.0f} ex/s = {job / raw:.2f} of raw TF "
            f"(start-up {result['job_startup_s']:.1f} s, subtracted); {result['seconds']:.0f} s in all.")
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)
    sys.exit(main())
