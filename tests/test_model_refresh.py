"""Model refresh, without a pipeline: a newer version under a base directory is checked and loaded
off the scoring thread and published as a new generation that scoring steps take between batches;
a version that fails any launch check is refused with its reason and the current one serves on.
Real exports, real loads."""

import logging
import os
import shutil

import numpy as np
import pytest

from models.serving.examples import make_example
from models.prepare import prepare_model
from models.serving.model import load_serving_model
from transforms.graph.model import GraphNode, ModelGraph, check_graph
from transforms.graph.postprocessors import Keep
from transforms.scoring.engines import batch_calls
from transforms.scoring.refresh import ModelRefresher


def scaling_model(factor, output="y"):
    import keras

    x = keras.Input(shape=(1,), name="x")
    return keras.Model(x, {output: keras.layers.Rescaling(factor, name=output)(x)})


@pytest.fixture
def base(tmp_path):
    path = str(tmp_path / "m")
    prepare_model(scaling_model(5.0), path)  # version 1
    return path


def records(*values):
    return [make_example({"x": [v]}).SerializeToString() for v in values]


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_a_newer_version_is_loaded_in_the_background_and_swapped_in_between_batches(base, engine):
    model = load_serving_model(base, "m")
    assert (model.base_path, model.version_name) == (base, "1")
    graph = check_graph(ModelGraph((GraphNode(model, engine),)))
    calls = batch_calls(graph)
    refresher = ModelRefresher(graph)
    assert refresher.check_once() == [] and refresher.current()[0] == 0  # nothing new
    prepare_model(scaling_model(7.0), base)  # version 2 appears
    (event,) = refresher.check_once()
    assert (event.model, event.version, event.loaded) == ("m", "2", True)
    generation, graph = refresher.current()
    assert generation == 1 and refresher.versions() == {"m": "2"} and refresher.take_events() == [event]
    assert graph.nodes[0].model.path == os.path.join(base, "2") and graph.nodes[0].model.base_path == base
    np.testing.assert_allclose(batch_calls(graph)["m"](records(1.0, 2.0))["y"], [[7.0], [14.0]])
    np.testing.assert_allclose(calls["m"](records(1.0))["y"], [[5.0]])  # a step not yet moved on
    assert refresher.check_once() == [] and refresher.take_events() == []  # nothing newer again


def test_a_version_that_breaks_the_graph_or_does_not_load_is_refused_and_the_current_one_serves(base):
    model = load_serving_model(base, "m")
    graph = check_graph(ModelGraph((GraphNode(model, postprocess=(Keep(["y"]),)),)))
    refresher = ModelRefresher(graph)
    prepare_model(scaling_model(7.0, output="z"), base)  # version 2: the keep step needs 'y'
    (event,) = refresher.check_once()
    assert not event.loaded and event.version == "2"
    assert "keep: no output ['y']" in event.reason
    # a damaged copy: version 3 is version 1 with a truncated saved_model.pb
    damaged = os.path.join(base, "3")
    shutil.copytree(os.path.join(base, "1"), damaged)
    with open(os.path.join(damaged, "saved_model.pb"), "r+b") as f:
        f.truncate(100)
    (event,) = refresher.check_once()
    assert not event.loaded and event.version == "3" and event.reason
    assert refresher.check_once() == []  # unchanged since refused: not tried again
    assert [e.loaded for e in refresher.take_events()] == [False, False]
    assert refresher.current()[0] == 0 and refresher.versions() == {"m": "1"}
    np.testing.assert_allclose(batch_calls(refresher.graph)["m"](records(2.0))["y"], [[10.0]])
    # the copy is finished (the directory changed): tried again, and taken
    shutil.rmtree(damaged)
    prepare_model(scaling_model(3.0), base, version=3)
    (event,) = refresher.check_once()
    assert event.loaded and event.version == "3"
    np.testing.assert_allclose(batch_calls(refresher.graph)["m"](records(2.0))["y"], [[6.0]])


def test_a_swap_is_logged_as_info_and_a_refusal_as_a_warning(base, caplog):
    refresher = ModelRefresher(check_graph(ModelGraph((GraphNode(load_serving_model(base, "m"),
                                                                 postprocess=(Keep(["y"]),)),))))
    prepare_model(scaling_model(7.0, output="z"), base)  # version 2: the keep step needs 'y'
    with caplog.at_level(logging.INFO, logger="transforms.scoring.refresh"):
        assert [e.loaded for e in refresher.check_once()] == [False]
        prepare_model(scaling_model(3.0), base)  # version 3
        assert [e.loaded for e in refresher.check_once()] == [True]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "transforms.scoring.refresh"]
    assert [level for level, _ in logged] == ["WARNING", "INFO"]
    assert "m version 2 at" in logged[0][1] and "refused, 1 keeps serving" in logged[0][1]
    assert logged[1][1] == "model refresh: m version 3 loaded and serving from the next batch (was 1)"


def test_a_newest_version_with_a_link_out_is_refused_once_and_the_current_one_serves(base, tmp_path):
    refresher = ModelRefresher(check_graph(ModelGraph((GraphNode(load_serving_model(base, "m")),))))
    prepare_model(scaling_model(7.0), base)  # version 2, then a link out of it
    outside = tmp_path / "outside.txt"
    outside.write_text("not the model's")
    os.symlink(str(outside), os.path.join(base, "2", "assets", "leak.txt"))
    (event,) = refresher.check_once()
    assert (event.model, event.version, event.loaded) == ("m", "2", False)
    assert "UnsafeModelError" in event.reason and "leak.txt" in event.reason
    assert refresher.check_once() == []  # refused once, not again on every look
    assert refresher.versions() == {"m": "1"}


def test_an_event_names_the_version_to_serve_older_ones_included(base):
    prepare_model(scaling_model(7.0), base)  # version 2: the highest, served at launch
    model = load_serving_model(base, "m")
    refresher = ModelRefresher(check_graph(ModelGraph((GraphNode(model),))))
    assert refresher.versions() == {"m": "2"}
    event = refresher.switch_to(f"m={os.path.join(base, '1')}")  # a rollback
    assert event.loaded and refresher.versions() == {"m": "1"}
    np.testing.assert_allclose(batch_calls(refresher.graph)["m"](records(1.0))["y"], [[5.0]])
    assert refresher.switch_to(os.path.join(base, "1")) is None  # serving already (one model: no name needed)
    assert refresher.switch_to(base).version == "2"  # a base directory: its highest version
    for message, reason in ((f"other={base}", "no model 'other' in this job"),
                            (f"m={base}/9", "does not exist")):
        event = refresher.switch_to(message)
        assert not event.loaded and reason in event.reason
    assert refresher.versions() == {"m": "2"}


def test_each_process_listens_on_the_refresh_topic_through_its_own_subscription(pubsub_emulator):
    from google.cloud import pubsub_v1

    from transforms.scoring.refresh import VersionMessages

    topic = pubsub_emulator.topic("model-refresh")
    first, second = VersionMessages(topic, wait_s=2), VersionMessages(topic, wait_s=2)
    assert first.subscription != second.subscription
    pubsub_v1.PublisherClient().publish(topic, b"m=gs://b/models/m/7").result(30)
    for listener in (first, second):  # every listener sees every message
        ((text, done),) = listener.pull()
        assert text == "m=gs://b/models/m/7"
        done()
        assert listener.pull() == []  # acknowledged: not delivered again
        listener.close()
    # one that outlives its process (killed before it deletes it) does not stay for ever
    kept = VersionMessages(topic, wait_s=2)
    ttl = pubsub_v1.SubscriberClient().get_subscription(subscription=kept.subscription).expiration_policy.ttl
    assert ttl.total_seconds() == 24 * 3600
    kept.close()


def test_a_listener_whose_pubsub_went_first_lets_its_process_exit_at_once(tmp_path):
    """The listener deletes its subscription at exit; where Pub/Sub is gone by then (the local
    emulator stopped, the network down), that is one failed try, not a minute of retries."""
    import time

    from pipelines.local.pubsub_emulator import running_emulator
    from transforms.scoring.refresh import VersionMessages

    with running_emulator(log_dir=str(tmp_path)) as emulator:
        listener = VersionMessages(emulator.topic("model-refresh"), wait_s=1)
    started = time.monotonic()
    listener.close()
    assert time.monotonic() - started < 10


def test_a_signature_of_tensors_is_refreshed_with_the_feature_spec_given_at_launch(tmp_path):
    """A Keras model.export() (a signature of tensors) swapped for its next version: the new
    version is fed by the same --feature_spec (here a default for its input)."""
    import json

    base = str(tmp_path / "m")
    scaling_model(5.0).export(os.path.join(base, "1"), verbose=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"features": [{"name": "x", "dtype": "float32", "shape": [1], "default": [2.0]}]}))
    model = load_serving_model(base, "m", spec_file=str(spec))
    assert model.input_tensors == ("x",) and model.feature_spec[0].default == [2.0]
    refresher = ModelRefresher(check_graph(ModelGraph((GraphNode(model, "fast"),))))
    scaling_model(7.0).export(os.path.join(base, "2"), verbose=False)
    (event,) = refresher.check_once()
    assert event.loaded, event.reason
    _, graph = refresher.current()
    assert graph.nodes[0].model.feature_spec == model.feature_spec
    (output,) = graph.nodes[0].model.outputs
    no_x = make_example({"other": [1.0]}).SerializeToString()  # x left out: its default, 2.0
    np.testing.assert_allclose(batch_calls(graph)["m"](records(1.0) + [no_x])[output], [[7.0], [14.0]])
