"""Pytest fixture for Google's Pub/Sub emulator (installed with the gcloud SDK on these machines),
for a conftest to import.

``pubsub_emulator`` (session): pipelines.local.pubsub_emulator.running_emulator on a free loopback port,
with this process's Pub/Sub clients pointed at it; yields a PubSubEmulator. A missing or failing
emulator fails the tests that use it with the reason; it never skips.
"""

import pytest

from pipelines.local.pubsub_emulator import EmulatorError, running_emulator


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory):
    try:
        with running_emulator(log_dir=str(tmp_path_factory.mktemp("pubsub"))) as emulator:
            yield emulator
    except EmulatorError as e:  # raised while starting: test failures never reach a fixture
        pytest.fail(str(e), pytrace=False)
