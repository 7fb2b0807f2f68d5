"""python -m bench.soak: memory of a long-running stream, ours beside the plainest Beam stream.

Two jobs on one Pub/Sub emulator, each fed --rate msg/s for --minutes:
- ours: `python -m pipelines.stream_infer` (the demo classifier, JSON payloads) with
  `--model_refresh_s 5`, a new model version written every --swap_every_min minutes;
- plain: `python -m bench.plain_stream` (ReadFromPubSub -> Map -> WriteToPubSub) on the same local
  runner with Beam's own read; with --plain_prompt_pulls, with our local read instead.
Each job's resident memory (VmRSS) is printed every minute. Growth is the least-squares slope of
RSS over the minutes after --warmup_min, in MB a minute; the target is ours within 0.25 MB/min of
plain's. Results: bench/results/soak.{json,md}.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from bench.stream_latency import copy_version, save_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def slope(points):
    """Least-squares slope of [(x, y)]."""
    n = len(points)
    if n < 2:
        return float("nan")
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else float("nan")


def publish_forever(topics, rate, stop):
    """rate msg/s to each topic until stop is set; returns the thread."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    payload = json.dumps({"measurements": [44.0, 17.0, 200.0, 4200.0], "island": 1}).encode()

    def run():
        start, i = time.monotonic(), 0
        while not stop.is_set():
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for topic in topics:
                publisher.publish(topic, payload, id=f"s{i}")
            i += 1
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain_forever(emulator, subscriptions, stop):
    """Keeps the output subscriptions empty (the emulator holds what nobody acknowledges)."""
    def run():
        while not stop.is_set():
            for subscription in subscriptions:
                emulator.pull(subscription, timeout_s=0.5)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def measure(args) -> dict:
    from models.serving.layout import resolve_version_dir
    from pipelines.local.demo import ensure_demo
    from pipelines.local.pubsub_emulator import running_emulator

    os.makedirs(args.out, exist_ok=True)
    first_version = resolve_version_dir(ensure_demo()["model"])
    base = os.path.join(args.out, "soak-models", "penguins")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    copy_version(base, first_version, 1)
    env = dict(os.environ, PYTHONPATH=ROOT)
    with running_emulator(log_dir=args.out) as emulator:
        topics = {name: emulator.topic(f"soak-{name}") for name in
                  ("ours-in", "ours-out", "ours-errors", "plain-in", "plain-out")}
        common = ["--pubsub_emulator", emulator.host, "--project", emulator.project]
        ours_cmd = [sys.executable, "-m", "pipelines.stream_infer",
                    "--input_subscription", emulator.subscription(topics["ours-in"]),
                    "--model", f"penguins={base}", "--model_refresh_s", "5",
                    "--output_topic", topics["ours-out"], "--errors_topic", topics["ours-errors"],
                    "--payload_format", "json", "--key_attribute", "id", "--progress_every_s", "60", *common]
        plain_cmd = [sys.executable, "-m", "bench.plain_stream",
                     "--input_subscription", emulator.subscription(topics["plain-in"]),
                     "--output_topic", topics["plain-out"], *common] + (
                         ["--prompt_pulls"] if args.plain_prompt_pulls else [])
        logs = {name: open(os.path.join(args.out, f"soak-{name}.log"), "wb") for name in ("ours", "plain")}
        jobs = {"ours": subprocess.Popen(ours_cmd, stdout=logs["ours"], stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                "plain": subprocess.Popen(plain_cmd, stdout=logs["plain"], stderr=subprocess.STDOUT, env=env,
                                          cwd=ROOT)}
        stop = threading.Event()
        samples = []
        swaps = []
        try:
            time.sleep(20)  # both started and loaded
            publish_forever([topics["ours-in"], topics["plain-in"]], args.rate, stop)
            drain_forever(emulator, [emulator.subscription(topics[t]) for t in ("ours-out", "ours-errors",
                                                                                  "plain-out")], stop)
            started = time.monotonic()
            print("minute | ours MB | plain MB", flush=True)
            for minute in range(int(args.minutes) + 1):
                time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
                if any(job.poll() is not None for job in jobs.values()):
                    raise RuntimeError(f"a job stopped: {[(n, j.returncode) for n, j in jobs.items()]}")
                sample = {"minute": minute, **{name: rss_mb(job.pid) for name, job in jobs.items()}}
                samples.append(sample)
                print(f"{minute:>6} | {sample['ours']:7.1f} | {sample['plain']:8.1f}", flush=True)
                if minute and args.swap_every_min and minute % args.swap_every_min == 0 and minute < args.minutes:
                    version = len(swaps) + 2
                    copy_version(base, os.path.join(base, "1"), version)
                    swaps.append(minute)
        finally:
            stop.set()
            for job in jobs.values():
                job.send_signal(signal.SIGINT)
            for job in jobs.values():
                try:
                    job.wait(60)
                except subprocess.TimeoutExpired:
                    job.kill()
            for log in logs.values():
                log.close()
    after = [s for s in samples if s["minute"] >= args.warmup_min]
    growth = {name: slope([(s["minute"], s[name]) for s in after]) for name in ("ours", "plain")}
    with open(os.path.join(args.out, "soak-ours.log"), errors="replace") as f:
        swapped = f.read().count("loaded and serving from the next batch")
    return {"rate_per_job": args.rate, "minutes": args.minutes, "warmup_min": args.warmup_min,
            "plain_read": "ours (prompt pulls)" if args.plain_prompt_pulls else "Beam's",
            "swaps_written_at_min": swaps, "swaps_served": swapped, "samples": samples,
            "growth_mb_per_min": growth, "difference_mb_per_min": growth["ours"] - growth["plain"]}


def markdown(r: dict, date: str) -> str:
    rows = "".join(f"| {s['minute']} | {s['ours']:.1f} | {s['plain']:.1f} |\n" for s in r["samples"])
    return (f"Measured {date} on {os.cpu_count()} cores: {r['rate_per_job']:g} msg/s into each job for "
            f"{r['minutes']:g} minutes, model versions written at minutes {r['swaps_written_at_min']} "
            f"({r['swaps_served']} served); plain job with {r['plain_read']} Pub/Sub read.\n\n"
            f"RSS growth after minute {r['warmup_min']:g}: ours {r['growth_mb_per_min']['ours']:.2f} MB/min, "
            f"plain {r['growth_mb_per_min']['plain']:.2f} MB/min (difference "
            f"{r['difference_mb_per_min']:+.2f} MB/min; target within 0.25).\n\n"
            "| minute | ours MB | plain MB |\n|---:|---:|---:|\n" + rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second into each job")
    parser.add_argument("--swap_every_min", type=int, default=10, help="write a new model version this often")
    parser.add_argument("--warmup_min", type=float, default=5.0, help="growth is measured after this")
    parser.add_argument("--plain_prompt_pulls", action="store_true",
                        help="the plain job reads with our local read instead of Beam's")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    result = save_results(args.out, "soak", measure(args), markdown)
    return 0 if result["difference_mb_per_min"] <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
