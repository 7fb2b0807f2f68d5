"""Shared fixtures: real models exported through models.prepare, real TFRecord files."""

import os

# Before TensorFlow or google-auth load: quiet TF, and keep google-auth off the metadata server.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:1")

import socket  # noqa: E402

import pytest  # noqa: E402

from tests import helpers  # noqa: E402
from tests.bigquery_local import bigquery_emulated, bigquery_emulator  # noqa: E402,F401  (fixtures)
from tests.pubsub_local import pubsub_emulator  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="session")
def penguin_model(tmp_path_factory):
    """The demo classifier exported and verified by models.prepare: (version dir, keras model)."""
    from models.prepare import prepare_model
    from pipelines.local.demo import build_demo_model

    keras_model = build_demo_model()
    version_dir = prepare_model(keras_model, str(tmp_path_factory.mktemp("models") / "penguins"))
    return version_dir, keras_model


@pytest.fixture
def write_tfrecords(tmp_path):
    """write_tfrecords(name, [bytes, ...], gzip=False, tail=b'') -> path of a real TFRecord file."""
    def write(name, records, gzip=False, tail=b""):
        return helpers.write_tfrecord_file(str(tmp_path / name), records, gzip=gzip, tail=tail)
    return write


@pytest.fixture(scope="session")
def graph_models(tmp_path_factory):
    """Small real models for graphs, exported by models.prepare: {name: (version dir, keras model)}.

    five and ten: x float[1] -> y = 5x, 10x; scale: x float[4] -> y = 1.5x (feeds the penguin
    classifier's measurements in a chain); words: x float[1] -> label string (a string output).
    """
    import keras

    from models.prepare import prepare_model

    base = tmp_path_factory.mktemp("graph_models")
    built = {}
    for name, factor, width in (("five", 5.0, 1), ("ten", 10.0, 1), ("scale", 1.5, 4)):
        x = keras.Input(shape=(width,), name="x")
        model = keras.Model(x, {"y": keras.layers.Rescaling(factor, name="y")(x)})
        built[name] = (prepare_model(model, str(base / name)), model)
    return built


@pytest.fixture
def prism_available(monkeypatch):
    """Beam's DirectRunner as it behaves on a machine where the Prism runner downloads and starts
    (it cannot here: no network). A stand-in, since there is no local Prism binary: PrismRunner
    accepts the job and reports it finished, as the real one would. Returns the pipelines it got."""
    from apache_beam.runners.portability import prism_runner
    from apache_beam.runners.runner import PipelineResult, PipelineState

    received = []

    class Finished(PipelineResult):
        def wait_until_finish(self, duration=None):
            return PipelineState.DONE

    def run_pipeline(self, pipeline, options):
        received.append(pipeline)
        return Finished(PipelineState.DONE)
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", run_pipeline)
    return received


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def offline(monkeypatch):
    """Any connection attempt fails at once (instead of stalling on retries) and fails the test,
    even if some library swallowed the error."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise NetworkUsed(f"network use in a dry run: {args[:2]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert attempts == []
