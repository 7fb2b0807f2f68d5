"""python -m bench.run: throughput and memory of raw TF, tfx-bsl's RunInference, and our job.

Every measurement runs in a fresh process (bench.worker). Each workload (bench.workloads) runs its
own modes, interleaved per repeat, its reference (raw TF: raw, or raw-arrays for A-dense) first
in every repeat; --modes runs a subset (the reference is always kept). Every ratio is computed
per repeat, against the reference (or the tfx-bsl baseline) measured in that same repeat, and
reported as the median of the repeats with their range; so are the examples/s. "vs tfx-bsl" is
against tfx-bsl-beam, the pipeline people write by hand around tfx_bsl.public.beam.RunInference.
Our jobs read each record's key (--key_feature id). graph-x2 runs the model twice in parallel as
a model graph (two outputs per row), so its ratios count model calls: 2 x examples/s. Pipeline
throughput subtracts the fixed start-up cost measured on a tiny input in the same repeat:
(N - n_tiny) / (t_N - t_tiny). Results: bench/results/results.{json,md}.
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
from typing import Dict, List, Optional, Sequence, Tuple

from bench import workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CALLS_PER_RECORD = {"graph-x2": 2}
# ratios reported beside each mode's against the reference and against the baseline
EXTRA_RATIOS = (("fast", "raw-chunked"), ("fast-dense", "raw-dense"), ("graph-x2", "fast"),
                ("tfx-bsl", "tfx-bsl-beam"))
# (workload, mode): the least fraction of the reference the issue asks of that mode
# the targets set for 2 cores: (workload, mode) -> the least median ratio against the reference
TARGETS = {("A", "fast"): 0.50, ("A", "fast-parquet"): 0.55, ("A-dense", "fast-parquet-io"): 0.75,
           ("B", "fast"): 0.95, ("C", "fast"): 0.95}
RSS_TARGETS_MB = {("A", "fast"): 1000}  # peak RSS of the job on 1M records of A

# records per mode; tfx-bsl is ~30x slower than the fast engine on A, so it gets less data
_A_FULL = {"raw": 200_000, "raw-chunked": 200_000, "tfx-bsl-beam": 100_000, "tfx-bsl": 100_000,
           "fast": 1_000_000, "fast-parquet": 1_000_000, "graph-x2": 500_000, "raw-dense": 200_000,
           "fast-dense": 1_000_000}
# quick: enough that each pipeline's work (tfx-bsl ~20k ex/s, fast ~300k on 2 cores) stands out
# of its start-up's noise (a run no longer than its start-up fails)
_A_QUICK = {"raw": 20_000, "raw-chunked": 20_000, "tfx-bsl-beam": 30_000, "tfx-bsl": 30_000,
            "fast": 100_000, "fast-parquet": 100_000, "graph-x2": 50_000, "raw-dense": 20_000,
            "fast-dense": 100_000}
SIZES = {
    "full": {"A": _A_FULL, "A-dense": {"raw-arrays": 200_000, "fast-parquet-io": 1_000_000},
             "B": {mode: 5_000 for mode in workloads.EXAMPLE_MODES},
             # ResNet50 scores 10-25 images/s on 2 cores: 256 are about 15 s a run
             "C": {"raw": 256, "fast": 256}},
    "quick": {"A": _A_QUICK, "A-dense": {"raw-arrays": 20_000, "fast-parquet-io": 50_000},
              "B": {mode: 2_000 for mode in workloads.EXAMPLE_MODES}, "C": {"raw": 64, "fast": 64}},
}


class BenchError(ValueError):
    """A bench command line that cannot run (an unknown workload or mode); a usage error."""


def parse_workloads(text: str) -> List[workloads.Workload]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in workloads.WORKLOADS]
    if unknown or not names:
        raise BenchError(f"--workloads {text!r}: unknown {unknown}; the workloads are "
                         f"{', '.join(workloads.WORKLOADS)}")
    return [workloads.WORKLOADS[n] for n in names]


def parse_modes(text: Optional[str], chosen: Sequence[workloads.Workload]) -> Optional[List[str]]:
    """--modes as a list (None: every mode of each workload); a mode that none of the chosen
    workloads runs is an error naming what each of them runs."""
    if text is None:
        return None
    modes = [m.strip() for m in text.split(",") if m.strip()]
    runnable = {m for w in chosen for m in w.modes}
    unknown = [m for m in modes if m not in runnable]
    if unknown or not modes:
        offered = "; ".join(f"{w.name}: {', '.join(w.modes)}" for w in chosen)
        raise BenchError(f"--modes {text!r}: no chosen workload runs {unknown or 'nothing'} ({offered})")
    return modes


def select_modes(workload: workloads.Workload, requested: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The workload's modes that were asked for (None: all), in its order and with its reference
    first, since every ratio is against it; () when it runs none of them."""
    if requested is None:
        return workload.modes
    chosen = [m for m in workload.modes if m in requested]
    if not chosen:
        return ()
    return tuple([workload.reference] + [m for m in chosen if m != workload.reference])


def run_worker(mode: str, model_dir: str, pattern: str, work: str, args: Sequence[str] = ()) -> dict:
    output = os.path.join(work, "out", mode)
    shutil.rmtree(os.path.dirname(output), ignore_errors=True)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "bench.worker", mode, model_dir, pattern,
                           os.path.join(output, "pred")] + list(args),
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.worker {mode} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(os.path.dirname(output), ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_count(mode: str, pattern: str, result: dict, expected: int) -> None:
    """A mode that scored other than every record of its input measured something else: fail."""
    if result["records"] != expected:
        raise RuntimeError(f"{mode} on {pattern} scored {result['records']:,} records, not the {expected:,} "
                           "of its input")


def measure_mode(workload: workloads.Workload, mode: str, model_dir: str, pattern: str, records: int,
                 tiny: str, work: str, worker_args: Sequence[str] = ()) -> dict:
    """One run of a mode on pattern (`records` records), each in a fresh process: for a pipeline
    mode, the fixed start-up measured on the tiny input is subtracted: (N - n_tiny) / (t_N - t_tiny).
    worker_args go to the measured run's worker (not the tiny one's)."""
    batch = ["--batch_size", str(workload.raw_batch_size)]
    big = run_worker(mode, model_dir, pattern, work, batch + list(worker_args))
    check_count(mode, pattern, big, records)
    startup, tiny_records = 0.0, 0
    if not mode.startswith("raw"):  # raw modes are timed around the calls alone
        small = run_worker(mode, model_dir, tiny, work, batch)
        check_count(mode, tiny, small, workload.tiny_records)
        startup, tiny_records = small["seconds"], small["records"]
        if big["seconds"] <= startup:  # the work is lost in the start-up's noise: no rate to report
            raise RuntimeError(f"{mode} on {pattern}: {records:,} records took {big['seconds']:.1f} s, no more "
                               f"than its start-up alone ({startup:.1f} s on {tiny_records:,}): give it more records")
    run = {"records": big["records"], "seconds": big["seconds"], "startup_seconds": startup,
           "examples_per_s": (big["records"] - tiny_records) / (big["seconds"] - startup),
           "peak_rss_mb": big["peak_rss_mb"]}
    if "gpu_util" in big:
        run["gpu_util"], run["gpu_util_problem"] = big["gpu_util"], big["gpu_util_problem"]
    return run


def describe_run(run: dict) -> str:
    return (f"{run['records']:>9,} records {run['seconds']:7.1f} s (start-up {run['startup_seconds']:4.1f} s) "
            f"-> {run['examples_per_s']:>10,.0f} ex/s, peak RSS {run['peak_rss_mb']:,.0f} MB")


def spread(values: Sequence[float]) -> dict:
    """Median, least and most of one measure over the repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def model_calls_per_s(mode: str, run: dict) -> float:
    return run["examples_per_s"] * MODEL_CALLS_PER_RECORD.get(mode, 1)


def ratio_name(numerator: str, denominator: str) -> str:
    return f"{numerator}_vs_{denominator}".replace("-", "_")


def ratio_pairs(workload: workloads.Workload, modes: Sequence[str]) -> List[Tuple[str, str]]:
    """(numerator, denominator) of every ratio reported: each mode against the reference, each
    against the baseline where it ran, and EXTRA_RATIOS whose two modes both ran."""
    pairs = [(m, workload.reference) for m in modes if m != workload.reference]
    if workload.baseline in modes:
        pairs += [(m, workload.baseline) for m in modes if m != workload.baseline]
    pairs += [p for p in EXTRA_RATIOS if p[0] in modes and p[1] in modes and p not in pairs]
    return pairs


def per_repeat_ratios(runs: Dict[str, List[dict]], numerator: str, denominator: str) -> List[float]:
    """numerator's model calls a second over denominator's, repeat by repeat (each against the
    denominator measured in its own repeat)."""
    return [model_calls_per_s(numerator, top) / model_calls_per_s(denominator, bottom)
            for top, bottom in zip(runs[numerator], runs[denominator])]


def summarize(workload: workloads.Workload, modes: Sequence[str], runs: Dict[str, List[dict]]) -> dict:
    summary = {}
    for mode in modes:
        summary[mode] = {
            "examples_per_s": spread([r["examples_per_s"] for r in runs[mode]]),
            "startup_seconds": statistics.median(r["startup_seconds"] for r in runs[mode]),
            "records": runs[mode][0]["records"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[mode]),
        }
    summary["ratios"] = {}
    for numerator, denominator in ratio_pairs(workload, modes):
        per_repeat = per_repeat_ratios(runs, numerator, denominator)
        summary["ratios"][ratio_name(numerator, denominator)] = dict(spread(per_repeat), per_repeat=per_repeat)
    return summary


def measure(workload, modes, sizes, repeats, work, log):
    model_dir = workloads.ensure_model(workload, work)
    data = {mode: workloads.ensure_data(workload, work, sizes[mode]) for mode in modes}
    tiny = workloads.ensure_data(workload, work, workload.tiny_records, tag="-tiny")
    runs = {mode: [] for mode in modes}
    for repeat in range(repeats):
        for mode in modes:
            runs[mode].append(measure_mode(workload, mode, model_dir, data[mode], sizes[mode], tiny, work))
            log(f"  {workload.name} repeat {repeat + 1} {mode:15s} " + describe_run(runs[mode][-1]))
    return {"workload": workload.description, "reference": workload.reference, "baseline": workload.baseline,
            "modes": list(modes), "summary": summarize(workload, modes, runs), "runs": runs}


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


def with_range(s: dict, fmt: str) -> str:
    """"0.44 (0.41-0.47)": the median and the range over the repeats (the median alone for one)."""
    median = format(s["median"], fmt)
    if s["n"] < 2:
        return median
    return f"{median} ({format(s['min'], fmt)}-{format(s['max'], fmt)})"


def ratio_cell(summary: dict, numerator: str, denominator: Optional[str], fmt: str) -> str:
    if denominator is None or denominator not in summary:
        return "-"
    if numerator == denominator:
        return format(1.0, fmt)
    return with_range(summary["ratios"][ratio_name(numerator, denominator)], fmt)


def target_lines(results: dict) -> List[str]:
    lines = []
    for (name, mode), target in TARGETS.items():
        res = results["workloads"].get(name)
        if res is None or mode not in res["summary"]:
            continue
        r = res["summary"]["ratios"][ratio_name(mode, res["reference"])]
        verdict = "met" if r["median"] >= target else "not met"
        lines.append(f"- {name} {mode}: {with_range(r, '.2f')} of {res['reference']} "
                     f"(target {target:.2f}: {verdict})")
    for (name, mode), most in RSS_TARGETS_MB.items():
        res = results["workloads"].get(name)
        if res is None or mode not in res["summary"]:
            continue
        peak = res["summary"][mode]["peak_rss_mb"]
        lines.append(f"- {name} {mode}: peak RSS {peak:,.0f} MB on {res['summary'][mode]['records']:,} records "
                     f"(target {most:,} MB at most: {'met' if peak <= most else 'not met'})")
    return lines


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Measured {results['date']} on {m['cpus']} cores ({m['cpu']}), {m['runner']}, "
             f"Beam {m['beam']}, TF {m['tensorflow']}, tfx-bsl {m['tfx_bsl']}; median of "
             f"{results['repeats']} interleaved repeats (range in brackets; each ratio computed per "
             "repeat), start-up subtracted.", "",
             "| workload | mode | records | examples/s | vs raw TF | vs tfx-bsl | start-up s | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results["workloads"].items():
        s = res["summary"]
        for mode in res["modes"]:
            r = s[mode]
            lines.append(f"| {name}: {res['workload']} | {mode} | {r['records']:,} | "
                         f"{with_range(r['examples_per_s'], ',.0f')} | "
                         f"{ratio_cell(s, mode, res['reference'], '.2f')} | "
                         f"{ratio_cell(s, mode, res['baseline'], '.1f')} | "
                         f"{r['startup_seconds']:.1f} | {r['peak_rss_mb']:,.0f} |")
    lines.append("\nvs raw TF: against each workload's reference, its first mode (raw; raw-arrays for "
                 "A-dense), in model calls a second. tfx-bsl-beam: tfx_bsl.public.beam.RunInference in a "
                 "plain Beam pipeline (TFRecord in, PredictionLogs out), the \"vs tfx-bsl\" baseline; "
                 "tfx-bsl and fast: python -m pipelines.batch_infer with that engine (TFRecord in, JSON "
                 "Lines out, --key_feature id); fast-parquet: the same with --output_format parquet; "
                 "graph-x2: the model twice in parallel as a graph (one row with both outputs per record); "
                 "its ratios count model calls (2 x examples/s); raw-dense: the model's dense signature "
                 "(serving_dense) on prebuilt arrays; fast-dense: batch_infer on that signature, the "
                 "engine parsing the same TFRecords into its tensors; raw-arrays: a Keras model.export() "
                 "called on prebuilt float32 batches of 1024 read from Parquet; fast-parquet-io: batch_infer "
                 "on those Parquet files, Parquet out; C's raw calls ResNet50's JPEG signature on batches "
                 "of 32 serialized examples.")
    targets = target_lines(results)
    if targets:
        lines += ["", "Targets (median of the per-repeat ratios):"] + targets
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat (a smoke run)")
    parser.add_argument("--workloads", default=",".join(workloads.WORKLOADS),
                        help=f"comma list of {', '.join(workloads.WORKLOADS)} (default: all)")
    parser.add_argument("--modes", default=None,
                        help="comma list: run only these modes (each workload those of them it runs, and "
                             "its reference); default: every mode of each workload")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--work", default=os.path.join(ROOT, "bench", "work"), help="models and data cache")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    try:
        chosen = parse_workloads(args.workloads)
        requested = parse_modes(args.modes, chosen)
    except BenchError as e:
        parser.error(str(e))
    sizes = SIZES["quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.quick else 3)
    os.makedirs(args.out, exist_ok=True)
    log = lambda text: print(text, flush=True)  # noqa: E731
    results = {"date": time.strftime("%Y-%m-%d"), "repeats": repeats, "machine": machine(), "workloads": {}}
    for workload in chosen:
        modes = select_modes(workload, requested)
        if not modes:
            log(f"workload {workload.name}: none of --modes {args.modes} (it runs {', '.join(workload.modes)})")
            continue
        log(f"workload {workload.name}: {workload.description}; {', '.join(modes)}")
        results["workloads"][workload.name] = measure(workload, modes, sizes[workload.name], repeats, args.work, log)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
