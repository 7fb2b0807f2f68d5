"""Messages of any size Pub/Sub allows (10 MB) in a local stream, on Google's Pub/Sub emulator: the
local pull takes a 6 MB message between small ones (gRPC's default 4 MiB receive limit refused the
whole pull, which was redelivered for ever with the messages beside it); a message over
--max_payload_bytes is one `read` dead letter carrying its payload, and holds back no other."""

import json
import time
import uuid

import pytest

from models.serving.examples import make_example
from tests.test_model_timeouts import hanging_export

BIG_BYTES = 6 * 1000 * 1000


@pytest.fixture(scope="module")
def doubling_model(tmp_path_factory):
    """y = 2x (the hanging model, never asked to hang)."""
    return hanging_export(str(tmp_path_factory.mktemp("doubling") / "1"))


def example(x: float, pad: bytes = b"") -> bytes:
    values = {"x": [float(x)], "hang": [0.0]}
    if pad:
        values["pad"] = [pad]
    return make_example(values).SerializeToString()


def fresh_topic(emulator, name: str) -> str:
    from google.cloud import pubsub_v1

    topic = f"projects/{emulator.project}/topics/{name}-{uuid.uuid4().hex[:8]}"
    pubsub_v1.PublisherClient().create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=emulator.subscription(topic), topic=topic,
                                                     ack_deadline_seconds=60)
    return topic


def publish(topic, payloads):
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    futures = [publisher.publish(topic, p, id=str(i)) for i, p in enumerate(payloads)]
    return [f.result(timeout=60) for f in futures]


def pull_all(subscription: str, expected: int, timeout_s: float = 120):
    """Messages pulled (and acknowledged) through the large-message client until `expected` came,
    then one more second for anything extra (a repeat)."""
    from google.api_core import exceptions

    from pipelines.local.pubsub_prompt_pulls import large_message_subscriber

    client, got = large_message_subscriber(), []
    deadline, settle = time.monotonic() + timeout_s, None
    while time.monotonic() < (settle or deadline):
        try:
            response = client.pull(subscription=subscription, max_messages=100, timeout=0.5)
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            continue
        if response.received_messages:
            client.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        got += [m.message for m in response.received_messages]
        if len(got) >= expected and settle is None:
            settle = time.monotonic() + 1.0
    return got


def test_a_6_mb_message_is_pulled_whole_where_grpc_s_default_limit_refuses_the_pull(pubsub_emulator):
    from google.api_core import exceptions
    from google.cloud import pubsub_v1

    topic = fresh_topic(pubsub_emulator, "big")
    default_client = pubsub_v1.SubscriberClient()
    beside = pubsub_emulator.subscription(topic) + "-default-client"
    default_client.create_subscription(name=beside, topic=topic, ack_deadline_seconds=60)
    payload = bytes(range(256)) * (BIG_BYTES // 256)
    publish(topic, [payload])
    (message,) = pull_all(pubsub_emulator.subscription(topic), 1, timeout_s=30)
    assert message.data == payload
    with pytest.raises(exceptions.ResourceExhausted):  # the cause: the emulator client's plain channel
        default_client.pull(subscription=beside, max_messages=10, timeout=10)


@pytest.mark.parametrize("max_payload_bytes", [None, 1_000_000])
def test_a_6_mb_message_between_small_ones_is_answered_and_holds_back_none(pubsub_emulator, doubling_model,
                                                                          max_payload_bytes):
    from pipelines import stream_infer
    from pipelines.local import pubsub_prompt_pulls

    emulator = pubsub_emulator
    requests, predictions, errors = (fresh_topic(emulator, n) for n in ("big-requests", "big-rows", "big-errors"))
    limit = ["--max_payload_bytes", str(max_payload_bytes)] if max_payload_bytes else []
    result = stream_infer.run(["--input_subscription", emulator.subscription(requests), "--model",
                               f"double={doubling_model}", "--output_topic", predictions, "--errors_topic", errors,
                               "--key_attribute", "id", "--max_batch_latency_ms", "100",
                               "--project", emulator.project] + limit, save_main_session=False, wait=False)
    big = example(7.0, pad=b"p" * BIG_BYTES)
    payloads = [example(i) for i in range(5)] + [big] + [example(i) for i in range(6, 11)]
    started = time.monotonic()
    try:
        ids = publish(requests, payloads)
        rows = pull_all(emulator.subscription(predictions), len(ids) - (1 if max_payload_bytes else 0))
        dead = pull_all(emulator.subscription(errors), 1 if max_payload_bytes else 0, timeout_s=10)
    finally:
        result.cancel()
        pubsub_prompt_pulls.close_readers()
    took = time.monotonic() - started
    print(f"11 messages, one of {len(big):,} bytes, --max_payload_bytes {max_payload_bytes}: answered in {took:.1f} s")
    assert sorted(m.attributes["message_id"] for m in rows + dead) == sorted(ids)  # each exactly once
    by_key = {json.loads(m.data)["key"]: json.loads(m.data)["double"]["y"][0] for m in rows}
    expected = {str(i): 2.0 * i for i in range(11) if i != 5}
    if max_payload_bytes:
        (letter,) = dead
        assert (letter.attributes["id"], letter.attributes["error_stage"]) == ("5", "read")
        assert f"{len(big):,} bytes is over --max_payload_bytes {max_payload_bytes:,}" in letter.attributes["error"]
        assert letter.data == big  # the payload as it came
    else:
        expected["5"] = 14.0  # the big one is scored like the rest
    assert by_key == expected
