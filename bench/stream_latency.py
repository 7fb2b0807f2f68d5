"""python -m bench.stream_latency: publish -> result latency of pipelines.stream_infer on the
Pub/Sub emulator, at a sustained rate, on the DirectRunner.

The job runs as its own process (`python -m pipelines.stream_infer`, the demo classifier, JSON
payloads keyed by an `id` attribute). Once a probe message has come back (model loaded), requests
are published at --rate msg/s for --seconds; one in --bad_every is not JSON and must come back as
a dead letter. Each request's latency is its publish call -> the arrival of its prediction or
dead letter on a streaming-pull subscriber in this process (one clock). Lost = requests with no
answer --drain_s after the last publish; duplicates are answers beyond the first.

With --swap_at_s S (default: halfway), the job runs with --model_refresh_s 1 on a copy of the model
in a base directory, and S seconds into publishing a new version (a copy of the first) is renamed
into place. Reported: the swap time (version written -> first answer scored by it, so it includes
up to one refresh interval of looking) and p50/p99/max latency before, during (published from the
write until 2 s after the first new-version answer) and after the swap.
Results: bench/results/stream_latency.{json,md}.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Answers:
    """Arrival times of answers by request id, from streaming pulls on several subscriptions."""

    def __init__(self):
        self.first = {}
        self.kinds = {}
        self.versions = {}  # request id -> the model version its prediction names
        self.duplicates = 0
        self._lock = threading.Lock()
        self._futures = []

    def listen(self, subscription, kind):
        from google.cloud import pubsub_v1

        def received(message):
            now = time.monotonic()
            key = message.attributes.get("id") or message.attributes.get("key")
            version = json.loads(message.data).get("model_versions", {}).get("penguins") \
                if kind == "prediction" else None
            message.ack()
            with self._lock:
                if key in self.first:
                    self.duplicates += 1
                else:
                    self.first[key], self.kinds[key], self.versions[key] = now, kind, version

        self._futures.append(pubsub_v1.SubscriberClient().subscribe(subscription, callback=received))

    def close(self):
        for future in self._futures:
            future.cancel()


def start_job(emulator, requests, predictions, errors, model, log_path, max_batch_size, latency_ms, extra=()):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    args = [sys.executable, "-m", "pipelines.stream_infer", "--input_subscription", emulator.subscription(requests),
            "--model", f"penguins={model}", "--output_topic", predictions, "--errors_topic", errors,
            "--payload_format", "json", "--key_attribute", "id", "--pubsub_emulator", emulator.host,
            "--project", emulator.project, "--max_batch_size", str(max_batch_size),
            "--max_batch_latency_ms", str(latency_ms), *extra]
    log = open(log_path, "wb")  # pylint: disable=consider-using-with
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log


def wait_until_ready(publisher, requests, answers, timeout_s=180):
    """Publishes probes until one is answered: the job has started and loaded its model."""
    deadline = time.monotonic() + timeout_s
    probe = 0
    while time.monotonic() < deadline:
        key = f"probe-{probe}"
        publisher.publish(requests, b'{"measurements": [44, 17, 200, 4200], "island": 1}', id=key).result(30)
        until = time.monotonic() + 3
        while time.monotonic() < until:
            if key in answers.first:
                return
            time.sleep(0.05)
        probe += 1
    raise RuntimeError(f"the stream job answered no probe in {timeout_s} s")


def publish_at_rate(publisher, requests, rate, seconds, bad_every):
    """Publishes rate x seconds requests on a fixed schedule; returns {id: publish time}."""
    import numpy as np

    rng = np.random.default_rng(0)
    sent = {}
    futures = []
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key = f"r{i:06d}"
        if bad_every and i % bad_every == bad_every - 1:
            payload = b"{not json"
        else:
            payload = json.dumps({"measurements": rng.normal([44, 17, 200, 4200], [5, 2, 14, 800]).tolist(),
                                  "island": int(rng.integers(0, 3))}).encode()
        sent[key] = time.monotonic()
        futures.append(publisher.publish(requests, payload, id=key))
    for future in futures:
        future.result(60)
    return sent, time.monotonic() - start


def copy_version(base, source, version):
    """A new version under base: copied beside it, then renamed into place (as a deploy would)."""
    import shutil

    staging = os.path.join(base, f"staging-{version}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    os.rename(staging, os.path.join(base, str(version)))


def swap_report(sent, answers, written_at):
    """Latency before, during and after a swap written at written_at (monotonic seconds)."""
    new = [answers.first[k] for k, v in answers.versions.items() if v == "2"]
    if not new:
        return {"written": True, "first_new_version_answer_s": None}
    first_new = min(new)
    windows = {"before": [], "during": [], "after": []}
    for key, published in sent.items():
        if key not in answers.first:
            continue
        window = "before" if published < written_at else "during" if published < first_new + 2.0 else "after"
        windows[window].append(answers.first[key] - published)
    return {"first_new_version_answer_s": first_new - written_at,
            "answers_by_version": {v: list(answers.versions.values()).count(v) for v in ("1", "2")},
            "latency_s": {name: {"count": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
                                 "max": max(values)} for name, values in windows.items() if values}}


def measure(args) -> dict:
    import shutil

    from google.cloud import pubsub_v1

    from models.serving.layout import resolve_version_dir
    from pipelines.local.demo import ensure_demo
    from pipelines.local.pubsub_emulator import running_emulator

    os.makedirs(args.out, exist_ok=True)
    model = ensure_demo()["model"]
    extra, swap = (), {}
    if args.swap_at_s > 0:
        first_version = resolve_version_dir(model)
        model = os.path.join(args.out, "models", "penguins")
        shutil.rmtree(model, ignore_errors=True)
        os.makedirs(model)
        copy_version(model, first_version, 1)
        extra = ("--model_refresh_s", "1")
    with running_emulator(log_dir=args.out) as emulator:
        requests, predictions, errors = (emulator.topic(n) for n in ("requests", "predictions", "errors"))
        answers = Answers()
        answers.listen(emulator.subscription(predictions), "prediction")
        answers.listen(emulator.subscription(errors), "dead_letter")
        # publish each message at once: the latency measured is the pipeline's, not client batching
        publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        job, log = start_job(emulator, requests, predictions, errors, model, os.path.join(args.out, "stream_job.log"),
                             args.max_batch_size, args.max_batch_latency_ms, extra)
        try:
            wait_until_ready(publisher, requests, answers)
            timer = None
            if args.swap_at_s > 0:
                def write_version_2():
                    copy_version(model, os.path.join(model, "1"), 2)
                    swap["written_at"] = time.monotonic()
                timer = threading.Timer(args.swap_at_s, write_version_2)
                timer.start()
            sent, publish_s = publish_at_rate(publisher, requests, args.rate, args.seconds, args.bad_every)
            if timer is not None:
                timer.join()
            deadline = time.monotonic() + args.drain_s
            while time.monotonic() < deadline and not all(k in answers.first for k in sent):
                time.sleep(0.1)
            time.sleep(1.0)  # late duplicates would arrive now
        finally:
            stop_started = time.monotonic()
            job.send_signal(signal.SIGINT)  # stream_infer cancels the pipeline on Ctrl-C
            try:
                job.wait(60)
            except subprocess.TimeoutExpired:
                job.kill()
            stop_s = time.monotonic() - stop_started
            log.close()
            answers.close()
    latencies = [answers.first[k] - t for k, t in sent.items() if k in answers.first]
    kinds = [answers.kinds[k] for k in sent if k in answers.first]
    bad = sum(1 for i in range(len(sent)) if args.bad_every and i % args.bad_every == args.bad_every - 1)
    return {
        "rate_target": args.rate, "seconds": args.seconds, "published": len(sent),
        "rate_achieved": len(sent) / publish_s,
        "predictions": kinds.count("prediction"), "dead_letters": kinds.count("dead_letter"),
        "bad_published": bad, "lost": len(sent) - len(latencies), "duplicates": answers.duplicates,
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                      "p99": percentile(latencies, 99), "max": max(latencies),
                      "mean": statistics.fmean(latencies)} if latencies else None,
        "max_batch_size": args.max_batch_size, "max_batch_latency_ms": args.max_batch_latency_ms,
        "stop_seconds": stop_s, "job_exit_code": job.returncode,
        "swap": swap_report(sent, answers, swap["written_at"]) if "written_at" in swap else None,
    }


def markdown(r: dict, date: str) -> str:
    lat = r["latency_s"] or {}
    cells = " | ".join(f"{lat.get(q, float('nan')) * 1000:,.0f}" for q in ("p50", "p95", "p99", "max"))
    return (f"Measured {date} on {os.cpu_count()} cores, DirectRunner (streaming), Pub/Sub emulator; the demo "
            f"classifier, JSON payloads, --max_batch_size {r['max_batch_size']} --max_batch_latency_ms "
            f"{r['max_batch_latency_ms']:g}.\n\n"
            "| msg/s (achieved) | seconds | published | predictions | dead letters | lost | duplicates | "
            "p50 ms | p95 ms | p99 ms | max ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            f"| {r['rate_achieved']:.0f} | {r['seconds']:g} | {r['published']:,} | {r['predictions']:,} | "
            f"{r['dead_letters']:,} | {r['lost']} | {r['duplicates']} | {cells} |\n" + swap_markdown(r.get("swap")))


def swap_markdown(swap) -> str:
    if not swap:
        return ""
    if swap.get("first_new_version_answer_s") is None:
        return "\nA new model version was written mid-stream, but no answer named it.\n"
    rows = "".join(f"| {name} | {w['count']:,} | {w['p50'] * 1000:,.0f} | {w['p99'] * 1000:,.0f} | {w['max'] * 1000:,.0f} |\n"
                   for name, w in swap["latency_s"].items())
    return (f"\nModel swap (--model_refresh_s 1): new version written -> first answer scored by it "
            f"{swap['first_new_version_answer_s']:.2f} s; answers by version {swap['answers_by_version']}.\n\n"
            "| published | answers | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n" + rows)


def save_results(out: str, stem: str, result: dict, markdown_of) -> dict:
    """Writes out/stem.json (with today's date) and out/stem.md (markdown_of(result, date)), prints
    the markdown; returns result."""
    date = time.strftime("%Y-%m-%d")
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(dict(result, date=date), f, indent=2)
    table = markdown_of(result, date)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(table)
    print(table)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second (default 200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="publishing time (default 60)")
    parser.add_argument("--bad_every", type=int, default=100, help="every Nth request is not JSON (0: none)")
    parser.add_argument("--drain_s", type=float, default=30.0, help="wait for answers after the last publish")
    parser.add_argument("--max_batch_size", type=int, default=256)
    parser.add_argument("--max_batch_latency_ms", type=float, default=100.0)
    parser.add_argument("--swap_at_s", type=float, default=None,
                        help="write a new model version this many seconds into publishing (default: halfway; "
                             "0: no swap)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    if args.swap_at_s is None:
        args.swap_at_s = args.seconds / 2
    result = save_results(args.out, "stream_latency", measure(args), markdown)
    ok = result["lost"] == 0 and result["duplicates"] == 0 and result["dead_letters"] == result["bad_published"]
    if args.swap_at_s > 0:
        ok = ok and bool(result["swap"]) and result["swap"].get("first_new_version_answer_s") is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
