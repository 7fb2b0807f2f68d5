"""At-least-once local streams: a message is acknowledged only once its row or dead letter is out.

Beam 2.77's local Pub/Sub read acknowledges each pull before the messages are processed, so a
stop (Ctrl-C, SIGTERM, kill -9) loses what was in flight. Locally, stream_infer therefore
(1) keeps the read from acknowledging (pubsub_prompt_pulls with defer_acks: each pulled message's
ack id is recorded here, and its lease extended while it is in flight), (2) publishes rows and
dead letters with PublishThenAckFn, which acknowledges a message once the message that answers it
is confirmed by Pub/Sub, and (3) on a clean stop drains: no new pulls, the messages in hand are
scored, published and acknowledged, then the job is cancelled. A message still unanswered when
the drain times out is handed back (its ack deadline set to 0) for prompt redelivery; a model call
still running then (a hung model, under --model_timeout_s) is no longer waited for
(transforms.scoring.timeouts.stop_waiting), so the stop ends within its drain time and nothing of
that batch is answered after its messages were handed back.

So after kill -9 a restart on the same subscription gets every message that was not answered
(some answered ones may come again: rows carry `message_id` so consumers can drop repeats); after
a clean stop nothing is lost and nothing repeated. Dataflow acknowledges on its own commit and
does not use this module. Local runs only: it is process state, as the local runner is in-process.
"""

import logging
import threading
import time
from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam

from pipelines.local.stream_progress import PROGRESS
from transforms.sources.messages import epoch_seconds_of

LEASE_SECONDS = 20  # the ack deadline an in-flight message is given, renewed every RENEW_EVERY_S
RENEW_EVERY_S = 5.0
ACK_EVERY_S = 0.05  # published answers are acknowledged in one call this often


class InFlight:
    """Pulled messages not yet answered: message id -> (subscription, ack id)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._acks: Dict[str, Tuple[str, str]] = {}
        self._published_at: Dict[str, float] = {}  # message id -> Pub/Sub publish time (epoch seconds)
        self._confirmed: List[str] = []  # answers published, their requests not yet acknowledged
        self._client = None
        self._threads: List[threading.Thread] = []
        self.draining = threading.Event()

    def received(self, client, subscription: str, received_messages: Iterable) -> None:
        with self._lock:
            self._client = client
            for rm in received_messages:
                self._acks[rm.message.message_id] = (subscription, rm.ack_id)
                self._published_at[rm.message.message_id] = epoch_seconds_of(rm.message.publish_time)
            if not self._threads:
                self._threads = [threading.Thread(target=self._renew_leases, name="pubsub-leases", daemon=True),
                                 threading.Thread(target=self._acknowledge_confirmed, name="pubsub-acks",
                                                  daemon=True)]
                for thread in self._threads:
                    thread.start()

    def confirmed(self, message_id: str) -> None:
        """The answer to this message is published (a publish future's callback): acknowledged
        shortly, in one call with the others confirmed meanwhile, off the runner's thread."""
        with self._lock:
            self._confirmed.append(message_id)

    def _acknowledge_confirmed(self) -> None:
        while True:
            time.sleep(ACK_EVERY_S)
            with self._lock:
                confirmed, self._confirmed = self._confirmed, []
            if confirmed:
                try:
                    self.answered(confirmed)
                except Exception:  # pylint: disable=broad-except  # unacknowledged means redelivered, not lost
                    pass

    def answered(self, message_ids: Iterable[str]) -> int:
        """Acknowledges these messages (their answers are out); unknown ids are ignored."""
        now = time.time()
        with self._lock:
            known = [m for m in message_ids if m in self._acks]
            taken = [self._acks.pop(m) for m in known]
            published = [self._published_at.pop(m, None) for m in known]
            client = self._client
        PROGRESS.acknowledged([None if t is None else max(now - t, 0.0) for t in published])
        for subscription, ack_ids in _by_subscription(taken).items():
            client.acknowledge(subscription=subscription, ack_ids=ack_ids)
        return len(taken)

    def count(self) -> int:
        """Messages pulled and not yet acknowledged."""
        with self._lock:
            return len(self._acks)

    def hand_back(self) -> int:
        """Sets the ack deadline of every unanswered message to 0 (redelivered at once); returns how many."""
        with self._lock:
            taken, self._acks, self._published_at = list(self._acks.values()), {}, {}
            client = self._client
        for subscription, ack_ids in _by_subscription(taken).items():
            client.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids, ack_deadline_seconds=0)
        return len(taken)

    def reset(self) -> None:
        with self._lock:
            self._acks, self._confirmed, self._published_at = {}, [], {}
        self.draining.clear()

    def _renew_leases(self) -> None:
        while True:
            time.sleep(RENEW_EVERY_S)
            with self._lock:
                held = list(self._acks.values())
                client = self._client
            for subscription, ack_ids in _by_subscription(held).items():
                try:
                    client.modify_ack_deadline(subscription=subscription, ack_ids=ack_ids,
                                               ack_deadline_seconds=LEASE_SECONDS)
                except Exception:  # pylint: disable=broad-except  # an expired lease means a redelivery, not a loss
                    pass


def _by_subscription(pairs: Iterable[Tuple[str, str]]) -> Dict[str, List[str]]:
    grouped: Dict[str, List[str]] = {}
    for subscription, ack_id in pairs:
        grouped.setdefault(subscription, []).append(ack_id)
    return grouped


IN_FLIGHT = InFlight()


class PublishThenAckFn(beam.DoFn):
    """PubsubMessage -> published on topic; the message it answers (its `message_id` attribute) is
    acknowledged once Pub/Sub confirms the publish (a callback: the runner's one thread never
    waits on it). A publish that fails leaves its request unacknowledged: redelivered, not lost."""

    def __init__(self, topic: str, dead_letters: bool = False):
        self._topic = topic
        self._dead_letters = dead_letters  # for the progress line: what this step publishes
        self._publisher = None

    def setup(self):
        from google.cloud import pubsub

        self._publisher = pubsub.PublisherClient()

    def process(self, message):
        attributes = message.attributes or {}
        future = self._publisher.publish(self._topic, message.data, **attributes)
        message_id = attributes.get("message_id")
        future.add_done_callback(lambda f: self._confirmed(f, message_id))

    def _confirmed(self, future, message_id: Optional[str]) -> None:
        if future.exception() is None:
            PROGRESS.published(self._dead_letters)
            if message_id:
                IN_FLIGHT.confirmed(message_id)


class AckAnsweredFn(beam.DoFn):
    """Acknowledges the message an element answers (elements with a `message_id`) where no topic
    publish does it: rows handed to a BigQuery table sink."""

    def __init__(self, dead_letters: bool = False):
        self._dead_letters = dead_letters

    def process(self, element):
        PROGRESS.published(self._dead_letters)
        IN_FLIGHT.answered([element.message_id])


class _NotAbandoned(logging.Filter):
    """Drops log records of a ScoringAbandoned (Beam logs the exception that ends a bundle)."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else type(record.msg)
        return not (isinstance(kind, type) and issubclass(kind, _abandoned()))


def _abandoned():
    from transforms.scoring.timeouts import ScoringAbandoned

    return ScoringAbandoned


def quiet_abandoned_bundles() -> None:
    """A stop gives up the runner's bundle that waits on a hung model call (ScoringAbandoned ends
    its thread): neither Beam's log of it nor the thread's end prints a traceback. Idempotent."""
    beam_log = logging.getLogger("apache_beam.runners.common")
    if not any(isinstance(f, _NotAbandoned) for f in beam_log.filters):
        beam_log.addFilter(_NotAbandoned())
    previous = threading.excepthook
    if getattr(previous, "quiet_abandoned", False):
        return

    def hook(args):
        if not issubclass(args.exc_type, _abandoned()):
            previous(args)
    hook.quiet_abandoned = True
    threading.excepthook = hook


DRAIN_S = 30.0  # the longest a clean stop waits for the messages in hand to be answered


def drain(result, timeout_s: float = DRAIN_S, poll_s: float = 0.05) -> Tuple[int, int]:
    """A clean stop: pulls stop, the messages in hand are answered and acknowledged (up to
    timeout_s), the rest handed back and any model call still running abandoned; then the job is
    cancelled. Returns (answered while draining, handed back)."""
    from transforms.scoring.timeouts import resume_waiting, stop_waiting

    quiet_abandoned_bundles()
    before = IN_FLIGHT.count()
    IN_FLIGHT.draining.set()
    deadline = time.monotonic() + timeout_s
    while IN_FLIGHT.count() and time.monotonic() < deadline:
        time.sleep(poll_s)
    stop_waiting()  # before the hand-back: nothing handed back is answered afterwards
    handed_back = IN_FLIGHT.hand_back()
    result.cancel()  # prompt: the runner's thread does not wait on a hung model call any more
    resume_waiting()  # for a later job in this process
    return before - handed_back, handed_back
