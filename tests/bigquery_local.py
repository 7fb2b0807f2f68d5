"""Pytest fixtures for a local BigQuery + GCS (tools/bigquery_local), for a conftest to import.

- ``bigquery_emulator`` (session): installs the emulators if needed (tools/bigquery_local/
  install.sh; a failed install fails the tests that use it, it never skips), starts them on free
  loopback ports with a fresh data folder, waits until they answer, and yields a
  :class:`BigQueryEmulator`. Stopped (whole process group) at the end of the session.
- ``bigquery_emulated`` (function): the same object, with this process's Google Cloud clients
  (Beam's included) redirected to it for the test (pipelines.local.bigquery_emulator), undone after.
"""

import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "bigquery_local"
START_TIMEOUT_S = 60
INSTALL_TIMEOUT_S = 900


@dataclasses.dataclass
class BigQueryEmulator:
    rest_url: str        # http://127.0.0.1:PORT (BigQuery REST)
    grpc_address: str    # 127.0.0.1:PORT (Storage Read API, plain gRPC)
    project: str
    storage_url: str     # http://127.0.0.1:PORT (GCS JSON API)
    bucket: str          # an existing bucket, e.g. for gcs_location / custom_gcs_temp_location
    data_dir: str
    start_seconds: float = 0.0  # time from launch until all three ports answered

    def client(self):
        """A google.cloud.bigquery.Client on the emulator (needs no patching)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=self.project, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": self.rest_url})

    def storage_client(self):
        """A google.cloud.storage.Client on the GCS emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=self.project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.storage_url})

    def activate(self):
        """Redirect this process's clients (Beam's too) here; see pipelines.local.bigquery_emulator."""
        from pipelines.local import bigquery_emulator

        bigquery_emulator.use_bigquery_emulator(self.rest_url, self.grpc_address, self.project)
        bigquery_emulator.use_storage_emulator(self.storage_url)

    @staticmethod
    def deactivate():
        from pipelines.local import bigquery_emulator

        bigquery_emulator.restore()


def install():
    """Run install.sh (instant when its stamp is current); fail loudly if it fails."""
    try:
        done = subprocess.run(["bash", str(TOOLS / "install.sh")], capture_output=True,
                              text=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tools/bigquery_local/install.sh took over {INSTALL_TIMEOUT_S} s",
                    pytrace=False)
    if done.returncode != 0:
        pytest.fail("tools/bigquery_local/install.sh failed (exit %d):\n%s"
                    % (done.returncode, (done.stdout + done.stderr)[-4000:]), pytrace=False)


def _free_ports(count):
    """Distinct free loopback ports (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _answers(url=None, port=None):
    try:
        if url:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _stop(process):
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory):
    install()
    rest, grpc_port, gcs = _free_ports(3)
    data_dir = tmp_path_factory.mktemp("bigquery_local")
    emulator = BigQueryEmulator(
        rest_url=f"http://127.0.0.1:{rest}", grpc_address=f"127.0.0.1:{grpc_port}",
        project="local", storage_url=f"http://127.0.0.1:{gcs}", bucket="local-bucket",
        data_dir=str(data_dir))
    log_path = data_dir / "emulators.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", str(TOOLS / "start.sh"), "--rest-port", str(rest), "--grpc-port",
             str(grpc_port), "--gcs-port", str(gcs), "--project", emulator.project,
             "--bucket", emulator.bucket, "--data-dir", str(data_dir / "data")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: teardown kills all of it
    try:
        checks = [
            lambda: _answers(f"{emulator.rest_url}/bigquery/v2/projects/local/datasets"),
            lambda: _answers(port=grpc_port),
            lambda: _answers(f"{emulator.storage_url}/storage/v1/b/{emulator.bucket}"),
        ]
        while checks:
            if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                why = ("exited with %s" % process.returncode if process.poll() is not None
                       else "not ready after %d s" % START_TIMEOUT_S)
                pytest.fail("local BigQuery/GCS emulators %s; log %s:\n%s" % (
                    why, log_path, log_path.read_text(errors="replace")[-4000:]), pytrace=False)
            checks = [check for check in checks if not check()]
            if checks:
                time.sleep(0.05)
        emulator.start_seconds = time.monotonic() - started
        yield emulator
    finally:
        _stop(process)


@pytest.fixture
def bigquery_emulated(bigquery_emulator):
    bigquery_emulator.activate()
    try:
        yield bigquery_emulator
    finally:
        bigquery_emulator.deactivate()
