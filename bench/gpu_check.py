"""python -m bench.gpu_check: the batch job against raw TensorFlow on this machine's GPU, models B and C.

One command, kept near --budget_s (330 s) by the repeats it starts: builds model B (the CNN of
bench/workloads.py) and model C (ResNet50 behind a JPEG signature) and their data, then,
interleaved per repeat, each workload in turn and each run in a fresh process (bench.worker):
- raw-gpu-batches: the signature called on batches of the sizes a job with --gpu forms
  (transforms.runtime.gpu.GPU_BATCH), outputs fetched: the limit on this GPU;
- fast-gpu: `python -m pipelines.batch_infer --gpu nvidia-local ...` on the local runner (GPU
  batch sizes, memory growth), TFRecord in, JSON Lines out, --key_feature id; start-up (measured
  on a tiny input in the same repeat) subtracted.
During both, the GPU's utilisation is sampled every 0.5 s (bench.gpu_util, nvidia-smi): mean and
max over each run's timed section (for the job, its start-up included). Prints each workload's
median rates and the median of the per-repeat ratios with their range (target: 0.95 or more),
and writes bench/results/gpu_check.{json,md}. A repeat is not started when the last one's time
would take the whole past --budget_s (the GPU is lent for minutes). Exits 2 when TensorFlow sees
no GPU (--allow_cpu runs it anyway, to try the script: with small --records, B=1000,C=64).
"""

import argparse
import json
import os
import statistics
import sys
import time

from bench import workloads
from bench.run import (ROOT, BenchError, describe_run, machine, measure_mode, parse_workloads, per_repeat_ratios,
                       spread, with_range)

MODES = ("raw-gpu-batches", "fast-gpu")
RECORDS = {"B": 10_000, "C": 4_096}  # a few seconds of work each on an H200, start-up aside
TARGET = 0.95


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


def utilisation(runs) -> dict:
    """The runs' GPU utilisation: mean of their means, most of their maxima (None: no samples)."""
    samples = [r["gpu_util"] for r in runs if r.get("gpu_util")]
    if not samples:
        problems = sorted({r.get("gpu_util_problem") or "no samples" for r in runs})
        return {"mean": None, "max": None, "samples": 0, "problem": "; ".join(problems)}
    return {"mean": statistics.fmean(s["mean"] for s in samples), "max": max(s["max"] for s in samples),
            "samples": sum(s["samples"] for s in samples)}


def describe_utilisation(u: dict) -> str:
    if u["mean"] is None:
        return f"GPU utilisation not sampled ({u['problem']})"
    return f"GPU utilisation mean {u['mean']:.0f}%, max {u['max']:.0f}%"


def records_per_workload(text, chosen) -> dict:
    """--records: N for every workload, or NAME=N,... (the others keep RECORDS'); each at least
    twice the workload's start-up probe, whose records are subtracted from what is scored."""
    counts = {w.name: RECORDS.get(w.name, 1_000) for w in chosen}
    if text:
        try:
            if "=" in text:
                given = dict((name.strip(), int(n)) for name, n in (part.split("=") for part in text.split(",")))
            else:
                given = {name: int(text) for name in counts}
        except ValueError:
            raise BenchError(f"--records {text!r}: expected N or NAME=N,NAME=N") from None
        unknown = sorted(set(given) - set(counts))
        if unknown:
            raise BenchError(f"--records {text!r}: {unknown} not among --workloads {', '.join(counts)}")
        counts.update(given)
    for w in chosen:
        if counts[w.name] < 2 * w.tiny_records:
            raise BenchError(f"--records: model {w.name} needs at least {2 * w.tiny_records} (its start-up is "
                             f"measured on {w.tiny_records} records and subtracted)")
    return counts


def summarize(name: str, records: int, runs: dict) -> dict:
    raw, job = MODES
    ratios = per_repeat_ratios(runs, job, raw)
    return {"workload": workloads.WORKLOADS[name].description, "records": records,
            "raw_examples_per_s": spread([r["examples_per_s"] for r in runs[raw]]),
            "job_examples_per_s": spread([r["examples_per_s"] for r in runs[job]]),
            "job_vs_raw": dict(spread(ratios), per_repeat=ratios),
            "job_startup_s": statistics.median(r["startup_seconds"] for r in runs[job]),
            "raw_gpu_util": utilisation(runs[raw]), "job_gpu_util": utilisation(runs[job]), "runs": runs}


def describe(name: str, s: dict, where: str) -> str:
    return (f"Model {name} ({s['workload']}) on {where}, {s['records']:,} records, median of "
            f"{s['job_vs_raw']['n']}{' (range in brackets)' if s['job_vs_raw']['n'] > 1 else ''}: raw TF {with_range(s['raw_examples_per_s'], ',.0f')} ex/s, "
            f"the job {with_range(s['job_examples_per_s'], ',.0f')} ex/s = "
            f"{with_range(s['job_vs_raw'], '.2f')} of raw TF (target {TARGET}; start-up "
            f"{s['job_startup_s']:.1f} s, subtracted); raw: {describe_utilisation(s['raw_gpu_util'])}; "
            f"the job: {describe_utilisation(s['job_gpu_util'])}.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="B,C")
    parser.add_argument("--records", default=None,
                        help="N for every workload, or NAME=N,... (default: "
                             f"{', '.join(f'{k}={v}' for k, v in RECORDS.items())})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget_s", type=float, default=330,
                        help="start no repeat that would, by the last one's time, end past this (default 330)")
    parser.add_argument("--allow_cpu", action="store_true", help="run without a GPU (to try the script)")
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work"), help="models and data cache")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    try:
        chosen = parse_workloads(args.workloads)
        counts = records_per_workload(args.records, chosen)
    except BenchError as e:
        parser.error(str(e))
    started = time.perf_counter()
    gpus = gpu_names()
    if not gpus and not args.allow_cpu:
        print("bench.gpu_check: TensorFlow sees no GPU here (pass --allow_cpu to run it on CPU anyway)",
              file=sys.stderr)
        return 2
    inputs = {}
    for workload in chosen:
        records = counts[workload.name]
        inputs[workload.name] = (records, workloads.ensure_model(workload, args.work),
                                 workloads.ensure_data(workload, args.work, records),
                                 workloads.ensure_data(workload, args.work, workload.tiny_records, tag="-tiny"))
    where = nvidia_smi() or (", ".join(gpus) if gpus else "the CPU (no GPU)")
    print(f"gpu_check: {gpus or 'no GPU'} {nvidia_smi()}; "
          + ", ".join(f"model {n} {r:,} records" for n, (r, *_) in inputs.items())
          + f" (set-up {time.perf_counter() - started:.0f} s)", flush=True)
    runs = {name: {mode: [] for mode in MODES} for name in inputs}
    repeats, last = 0, 0.0
    for repeat in range(args.repeats):
        if repeat and time.perf_counter() - started + last > args.budget_s:
            print(f"  stopping after {repeat} repeats: another would end past --budget_s {args.budget_s:g}",
                  flush=True)
            break
        begun = time.perf_counter()
        for workload in chosen:
            records, model_dir, data, tiny = inputs[workload.name]
            for mode in MODES:
                run = measure_mode(workload, mode, model_dir, data, records, tiny, args.work, ["--gpu_util"])
                runs[workload.name][mode].append(run)
                print(f"  repeat {repeat + 1} {workload.name} {mode:16s} " + describe_run(run) + "; "
                      + describe_utilisation(utilisation([run])), flush=True)
        repeats, last = repeat + 1, time.perf_counter() - begun
    summaries = {name: summarize(name, inputs[name][0], runs[name]) for name in inputs}
    result = {"date": time.strftime("%Y-%m-%d"), "machine": dict(machine(), gpus=gpus, nvidia_smi=nvidia_smi()),
              "repeats": repeats, "workloads": summaries, "seconds": time.perf_counter() - started}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [describe(name, s, where) for name, s in summaries.items()]
    lines.append(f"{result['seconds']:.0f} s in all.")
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from models.tf_console import load_tensorflow_quietly

    load_tensorflow_quietly(sys.argv)
    sys.exit(main())
