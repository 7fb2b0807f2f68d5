"""Google's Pub/Sub emulator on loopback, for local streams, tests and the latency benchmark.

    python -m pipelines.local.pubsub_emulator [--port 8085] [--topic NAME ...]

runs it in the foreground (Ctrl-C stops it), creating each --topic with a subscription of the
same name in project `local-project`; jobs then reach it with --pubsub_emulator 127.0.0.1:PORT.
In code, `with running_emulator() as emulator:` starts one on a free port, points this process's
Pub/Sub clients at it (PUBSUB_EMULATOR_HOST) and stops its whole process group on exit. The
emulator comes with the gcloud SDK (`gcloud components install pubsub-emulator`) or from
PUBSUB_EMULATOR_BIN.
"""

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Iterator, List, Optional

START_TIMEOUT_S = 60
PROJECT = "local-project"  # Beam checks project ids: 6-30 characters


class EmulatorError(RuntimeError):
    """The emulator is not installed or did not start."""


def emulator_command() -> str:
    explicit = os.environ.get("PUBSUB_EMULATOR_BIN")
    if explicit:
        return explicit
    gcloud = shutil.which("gcloud")
    if not gcloud:
        raise EmulatorError("the Pub/Sub emulator needs the gcloud SDK (gcloud not on PATH; or set "
                            "PUBSUB_EMULATOR_BIN)")
    root = subprocess.run([gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True,
                          text=True, timeout=60).stdout.strip()
    path = os.path.join(root, "platform", "pubsub-emulator", "bin", "cloud-pubsub-emulator")
    if not os.path.exists(path):
        raise EmulatorError(f"no Pub/Sub emulator at {path} (gcloud components install pubsub-emulator)")
    return path


@dataclasses.dataclass
class PubSubEmulator:
    host: str  # 127.0.0.1:PORT
    project: str = PROJECT

    def topic(self, prefix: str, unique: bool = True) -> str:
        """A topic with a subscription of the same name: returns the topic path. With unique, a
        new name; without, an existing topic or subscription of that name is fine (a restart)."""
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        name = f"{prefix}-{uuid.uuid4().hex[:8]}" if unique else prefix
        topic = f"projects/{self.project}/topics/{name}"
        with contextlib.suppress(exceptions.AlreadyExists):
            pubsub_v1.PublisherClient().create_topic(name=topic)
        with contextlib.suppress(exceptions.AlreadyExists):
            pubsub_v1.SubscriberClient().create_subscription(
                name=self.subscription(topic), topic=topic, ack_deadline_seconds=60)
        return topic

    @staticmethod
    def subscription(topic: str) -> str:
        return topic.replace("/topics/", "/subscriptions/")

    @staticmethod
    def pull(subscription: str, timeout_s: float = 1.0) -> List:
        """Every message available now (acknowledged), waiting up to timeout_s for the first."""
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        client = pubsub_v1.SubscriberClient()
        try:
            response = client.pull(subscription=subscription, max_messages=1000, timeout=timeout_s)
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            return []
        if response.received_messages:
            client.acknowledge(subscription=subscription,
                               ack_ids=[m.ack_id for m in response.received_messages])
        return [m.message for m in response.received_messages]


def _answers(project: str) -> bool:
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    try:
        list(pubsub_v1.PublisherClient().list_topics(project=f"projects/{project}", timeout=1))
        return True
    except (exceptions.GoogleAPIError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_emulator(port: Optional[int] = None, log_dir: Optional[str] = None,
                     project: str = PROJECT) -> Iterator[PubSubEmulator]:
    """Starts the emulator, waits until it answers, yields it; raises EmulatorError."""
    port = port or _free_port()
    log_path = os.path.join(log_dir or tempfile.mkdtemp(prefix="pubsub-"), "emulator.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([emulator_command(), "--host=127.0.0.1", f"--port={port}"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = f"127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while not _answers(project):
            if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                with open(log_path, errors="replace") as f:
                    raise EmulatorError(f"Pub/Sub emulator did not start; log {log_path}:\n{f.read()[-3000:]}")
            time.sleep(0.1)
        yield PubSubEmulator(f"127.0.0.1:{port}", project)
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.local.pubsub_emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8085)
    parser.add_argument("--topic", action="append", default=[], help="create this topic and its subscription")
    args = parser.parse_args(argv)
    # SIGTERM stops it as Ctrl-C does, so the emulator's own process group is stopped too (it runs
    # in a session of its own and would outlive a plain SIGTERM of this process)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with running_emulator(args.port) as emulator:
            for name in args.topic:
                topic = emulator.topic(name, unique=False)
                print(f"topic {topic}, subscription {emulator.subscription(topic)}")
            print(f"Pub/Sub emulator on {emulator.host} (project {emulator.project}); "
                  f"jobs: --pubsub_emulator {emulator.host} --project {emulator.project}. Ctrl-C stops it.",
                  flush=True)
            while True:
                time.sleep(3600)
    except EmulatorError as e:
        print(f"pubsub_emulator: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
