"""Prompt Pub/Sub reads on the local DirectRunner (streaming), for local runs and tests only.

Beam 2.77's DirectRunner runs a streaming pipeline on ONE worker thread
(executor._ExecutorServiceParallelExecutor.NUM_WORKERS = 1), and its Pub/Sub read pulls at most
10 messages with a 30 s blocking pull. While the stream is idle that pull holds the only thread, so
no processing-time timer fires: a half-full batch waits up to 30 s for the next message, and
cancel() waits as long. use_prompt_pulls() wraps the read's subscriber client so each pull waits
at most poll_s (an empty answer is no error) and takes up to max_messages at once, and pulls
through large_message_subscriber(): on an emulator the Pub/Sub client opens a channel with gRPC's
default 4 MiB receive limit, so a pull holding a 4-10 MB message (Pub/Sub allows 10 MB) failed and
was redelivered for ever with the messages pulled beside it. Dataflow and other runners have their
own Pub/Sub reader and are not touched.
"""

import os
import threading
import time
from typing import Optional

_original = None
_LARGE_CLIENTS = {}  # emulator host (or None) -> its large_message_subscriber
_LARGE_CLIENTS_LOCK = threading.Lock()
UNLIMITED_MESSAGES = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def large_message_subscriber():
    """A SubscriberClient whose pulls take messages of any size Pub/Sub allows, one per process
    and Pub/Sub host. Google's own transport sets no gRPC message limit; an emulator's
    (PUBSUB_EMULATOR_HOST) channel is opened here with none either."""
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    with _LARGE_CLIENTS_LOCK:
        if host not in _LARGE_CLIENTS:
            _LARGE_CLIENTS[host] = _new_large_message_subscriber(host)
        return _LARGE_CLIENTS[host]


def _new_large_message_subscriber(host: Optional[str]):
    from google.cloud import pubsub_v1

    if not host:
        return pubsub_v1.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=UNLIMITED_MESSAGES)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


class _PromptPulls:
    """A SubscriberClient whose pull() waits at most poll_s and returns an empty response then.
    With defer_acks, the read's own acknowledge() is a no-op: pulled messages are recorded in
    pubsub_acks.IN_FLIGHT and acknowledged once answered; while draining, nothing is pulled."""

    def __init__(self, client, poll_s: float, max_messages: int, defer_acks: bool = False):
        self._client = client  # the read's own client: subscriptions, closing
        self._puller = large_message_subscriber()  # pulls, acknowledgements and leases
        self._poll_s = poll_s
        self._max_messages = max_messages
        self._defer_acks = defer_acks

    def pull(self, subscription, max_messages=10, timeout=None, **kwargs):
        from google.api_core import exceptions
        from google.pubsub_v1 import PullResponse

        from pipelines.local.pubsub_acks import IN_FLIGHT

        if self._defer_acks and IN_FLIGHT.draining.is_set():
            time.sleep(self._poll_s)  # a clean stop: take nothing new
            return PullResponse()
        try:
            response = self._puller.pull(subscription=subscription, timeout=self._poll_s,
                                         max_messages=max(max_messages, self._max_messages), **kwargs)
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            return PullResponse()
        if self._defer_acks:
            IN_FLIGHT.received(self._puller, subscription, response.received_messages)
        return response

    def acknowledge(self, subscription, ack_ids, **kwargs):
        if not self._defer_acks:
            return self._puller.acknowledge(subscription=subscription, ack_ids=ack_ids, **kwargs)
        return None  # acknowledged once each message's row or dead letter is published

    def __getattr__(self, name):
        return getattr(self._client, name)


def use_prompt_pulls(poll_s: float = 0.05, max_messages: int = 500, defer_acks: bool = False) -> None:
    """Make the DirectRunner's Pub/Sub reads in this process prompt (idempotent); with defer_acks,
    at-least-once (pipelines.local.pubsub_acks)."""
    global _original
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    if _original is None:
        _original = _PubSubReadEvaluator.__dict__["_get_subscriber_client"]
    original = _original.__func__

    def prompt_client(cls, transform):
        return _PromptPulls(original(cls, transform), poll_s, max_messages, defer_acks)

    _PubSubReadEvaluator._get_subscriber_client = classmethod(prompt_client)


def restore() -> Optional[bool]:
    """Undo use_prompt_pulls; returns whether anything was undone."""
    global _original
    if _original is None:
        return False
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    _PubSubReadEvaluator._get_subscriber_client = _original
    _original = None
    return True


def close_readers() -> int:
    """Close the DirectRunner's Pub/Sub readers of this process now (deleting the temporary
    subscriptions of --input_topic reads) rather than at interpreter exit, when the service may
    be gone and each deletion retries for 60 s. Returns how many were open."""
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator

    with _PubSubReadEvaluator._subscriber_client_cache_lock:
        readers = list(_PubSubReadEvaluator._subscriber_client_cache.values())
    for reader in readers:
        reader.close()
    with _LARGE_CLIENTS_LOCK:
        pullers = list(_LARGE_CLIENTS.values())
        _LARGE_CLIENTS.clear()
    for puller in pullers:
        puller.close()
    return len(readers)
