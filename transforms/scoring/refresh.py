"""Model refresh in a running stream: new versions found, checked and loaded in the background,
swapped in between batches.

A model given as a TF Serving base directory (`--model NAME=BASE_DIR`) is watched every
`--model_refresh_s` seconds for a newer version, by TF Serving's rule: the numerically highest
all-digit subdirectory. A candidate goes through everything a launch checks, off the scoring
thread: the contract (models.serving.model.load_serving_model), the graph with the candidate in
place of the model (bridges and post-processing still fit its outputs), a load by the node's engine
and two golden examples scored. Only then does the scoring step swap it in, between two batches;
a batch is scored wholly by one version of each model, and its rows say which. A candidate that
fails any step is refused with a logged reason, counted, and the current version keeps serving; it
is tried again when the directory changes (a copy still in progress becomes whole).

Event mode (`--model_refresh_topic`): instead of looking, each worker process listens on a Pub/Sub
topic (through a subscription of its own) whose messages name the version directory to serve,
`NAME=DIR`; any version, so a message can roll a model back. The same checks apply.

Each node refreshes on its own; both engines. One ModelRefresher per process and graph; loads are
shared by the process (transforms.scoring.engines), and a replaced version is released.
"""

import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from models.serving import layout
from models.serving.fingerprint import model_files
from models.serving.model import load_serving_model
from transforms.graph.model import ModelGraph, check_graph
from transforms.scoring.engines import BatchCall, load_batch_call, release_batch_call

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RefreshSettings:
    """How a stream's models are refreshed: every_s, a look at each base directory this often
    (--model_refresh_s); topic, a Pub/Sub topic whose messages name the version to serve
    (--model_refresh_topic). Neither: versions stay as launched."""
    every_s: float = 0.0
    topic: Optional[str] = None

    @property
    def on(self) -> bool:
        return self.every_s > 0 or bool(self.topic)


@dataclasses.dataclass(frozen=True)
class RefreshEvent:
    """What happened to a candidate version, reported as metrics by the scoring step."""
    model: str
    version: str
    loaded: bool
    seconds: float  # from finding the version to ready (or refused)
    reason: str = ""


def _golden_check(node, call: BatchCall) -> None:
    """Two golden examples through the loaded candidate: one output row per example."""
    import numpy as np

    from models.serving.examples import golden_records

    outputs = call(golden_records(node.model.feature_spec, 2))
    for name, value in outputs.items():
        if np.asarray(value).shape[:1] != (2,):
            raise ValueError(f"output {name!r} has shape {list(np.asarray(value).shape)} for 2 examples")


class ModelRefresher:
    """Finds, checks and loads newer versions of a graph's base-directory models, then publishes
    the graph with them in place as a new generation. One per process and graph (shared_refresher):
    Beam may set up and tear down scoring DoFns per bundle, and every instance adopts the current
    generation between its batches (current())."""

    def __init__(self, graph: ModelGraph, keep_logs: bool = False, clock: Callable[[], float] = time.monotonic):
        self._graph = graph
        self._generation = 0
        self._keep_logs = keep_logs
        self._clock = clock
        self._lock = threading.Lock()
        self._refused: Dict[str, object] = {}  # version dir -> its files when refused; base dir -> an unsafe refusal
        self._events: List[RefreshEvent] = []
        self._thread: Optional[threading.Thread] = None
        self._start_lock = threading.Lock()

    @property
    def graph(self) -> ModelGraph:
        with self._lock:
            return self._graph

    def current(self) -> Tuple[int, ModelGraph]:
        """(generation, graph): a scoring step whose generation differs takes this graph and its
        models' batch calls (loaded already, shared through transforms.scoring.engines)."""
        with self._lock:
            return self._generation, self._graph

    def versions(self) -> Dict[str, str]:
        return {n.name: n.model.version_name for n in self.graph.nodes}

    def take_events(self) -> List[RefreshEvent]:
        """The events since the last call, once (reported as metrics on a bundle's thread)."""
        with self._lock:
            events, self._events = self._events, []
            return events

    def start(self, settings: RefreshSettings) -> None:
        """Looks every settings.every_s seconds, or listens on settings.topic, on a daemon thread
        (once; later calls do nothing)."""
        with self._start_lock:  # scoring steps on several threads may start it at once
            if self._thread is None:
                self._thread = self._start(settings)

    def _start(self, settings: RefreshSettings) -> threading.Thread:
        listener = VersionMessages(settings.topic) if settings.topic else None

        def loop():
            while True:
                try:
                    if listener is None:
                        time.sleep(settings.every_s)
                        self.check_once()
                    else:
                        for text, done in listener.pull():
                            self.switch_to(text)
                            done()
                except Exception:  # pylint: disable=broad-except  # a failed look is tried again next time
                    LOG.exception("model refresh: looking for new versions failed")
                    time.sleep(1.0)
        thread = threading.Thread(target=loop, name="model-refresh", daemon=True)
        thread.start()
        return thread

    def switch_to(self, text: str) -> Optional[RefreshEvent]:
        """An event message: 'NAME=PATH' (or 'PATH' for a graph of one model), PATH a version
        directory (or a base directory: its highest version). Any version, older ones included (a
        rollback). Returns the event, None if that version already serves."""
        name, sep, path = text.strip().partition("=")
        if not sep or "/" in name or ":" in name:
            name, path = (self.graph.nodes[0].name if len(self.graph.nodes) == 1 else ""), text.strip()
        nodes = {n.name: n for n in self.graph.nodes}
        try:
            if name not in nodes:
                raise ValueError(f"no model {name!r} in this job (models: {sorted(nodes)}); "
                                 "a refresh message is NAME=VERSION_DIR")
            version_dir = layout.resolve_version_dir(path)
        except Exception as e:  # pylint: disable=broad-except  # a bad message is refused, logged and counted
            LOG.warning("model refresh: message %r refused: %s", text[:200], e)
            event = RefreshEvent(name or "?", path.rstrip("/").rsplit("/", 1)[-1], False, 0.0, str(e))
        else:
            if version_dir == nodes[name].model.path:
                return None
            event = self._refresh(nodes[name], version_dir)
        with self._lock:
            self._events.append(event)
        return event

    def check_once(self) -> List[RefreshEvent]:
        """One look at every watched base directory; a newer version that passes every check is
        published at once (the next batch of each scoring step uses it)."""
        events = []
        for node in self.graph.nodes:
            if not node.model.base_path:
                continue
            try:
                newest = layout.resolve_version_dir(node.model.base_path)
            except layout.UnsafeModelError as e:  # refused once, not a traceback on every look
                events += self._refuse_unsafe(node, e)
                continue
            if newest == node.model.path:
                continue
            # a refused version is tried again once its files change (a copy in progress is whole)
            state = model_files(newest)
            if self._refused.get(newest) != state:
                events.append(self._refresh(node, newest, state))
        with self._lock:
            self._events.extend(events)
        return events

    def _refuse_unsafe(self, node, error: Exception) -> List[RefreshEvent]:
        """The event of a newest version with links out or special files (none if refused already)."""
        reason = f"{type(error).__name__}: {error}"
        if self._refused.get(node.model.base_path) == reason:
            return []
        self._refused[node.model.base_path] = reason
        version = (layout.version_names(node.model.base_path) or ["?"])[-1]
        LOG.warning("model refresh: %s version %s refused, %s keeps serving: %s", node.name, version,
                    node.model.version_name, reason)
        return [RefreshEvent(node.name, version, False, 0.0, reason)]

    def _refresh(self, node, version_dir: str, state: Optional[List[Tuple[str, int]]] = None) -> RefreshEvent:
        started = self._clock()
        version = version_dir.rstrip("/").rsplit("/", 1)[-1]
        state = model_files(version_dir) if state is None else state
        candidate_spec = None
        try:
            # a --feature_spec given at launch applies to every version
            model = load_serving_model(version_dir, node.name, node.model.signature, node.model.spec_file)
            candidate_spec = model.engine_spec
            candidate = dataclasses.replace(node, model=dataclasses.replace(model, base_path=node.model.base_path))
            graph = self.graph
            graph = dataclasses.replace(graph, nodes=tuple(candidate if n.name == node.name else n
                                                           for n in graph.nodes))
            check_graph(graph)  # bridges and post-processing still fit the new outputs
            call = load_batch_call(node.engine, version_dir, node.model.signature, self._keep_logs, candidate_spec)
            _golden_check(candidate, call)
        except Exception as e:  # pylint: disable=broad-except  # refused; the current version serves on
            reason = f"{type(e).__name__}: {e}".replace("\n", " ")
            release_batch_call(node.engine, version_dir, node.model.signature, self._keep_logs,
                               candidate_spec)
            self._refused[version_dir] = state
            LOG.warning("model refresh: %s version %s at %s refused, %s keeps serving: %s", node.name, version,
                        version_dir, node.model.version_name, reason)
            return RefreshEvent(node.name, version, False, self._clock() - started, reason)
        with self._lock:
            self._graph, self._generation = graph, self._generation + 1
        # the old version's memory goes once every scoring step has moved on
        release_batch_call(node.engine, node.model.path, node.model.signature, self._keep_logs,
                           node.model.engine_spec)
        LOG.info("model refresh: %s version %s loaded and serving from the next batch (was %s)", node.name,
                 version, node.model.version_name)
        return RefreshEvent(node.name, version, True, self._clock() - started)


SUBSCRIPTION_TTL_S = 24 * 3600  # the least expiration Pub/Sub allows


class VersionMessages:
    """The messages of a refresh topic, through a subscription of this process's own (each worker
    process must see every message; deleted at exit)."""

    def __init__(self, topic: str, wait_s: float = 5.0):
        import atexit
        import uuid

        from google.cloud import pubsub_v1

        self._client = pubsub_v1.SubscriberClient()
        project, name = topic.split("/")[1], topic.rsplit("/", 1)[-1]
        self.subscription = f"projects/{project}/subscriptions/{name}-model-refresh-{uuid.uuid4().hex[:12]}"
        # one that outlives its process (killed before its delete) expires after a day unused
        self._client.create_subscription(request={
            "name": self.subscription, "topic": topic, "ack_deadline_seconds": 600,
            "expiration_policy": {"ttl": {"seconds": SUBSCRIPTION_TTL_S}}})
        self._wait_s = wait_s
        atexit.register(self.close)

    def pull(self):
        """[(text, done)] of the messages now there (waits up to wait_s for the first)."""
        from google.api_core import exceptions

        try:
            response = self._client.pull(subscription=self.subscription, max_messages=10, timeout=self._wait_s)
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            return []
        return [(m.message.data.decode("utf-8", "replace"),
                 lambda ack_id=m.ack_id: self._client.acknowledge(subscription=self.subscription, ack_ids=[ack_id]))
                for m in response.received_messages]

    def close(self) -> None:
        """Deletes the subscription: one try of at most 5 s (the client's own retries would hold a
        process's exit for a minute where Pub/Sub cannot be reached)."""
        try:
            self._client.delete_subscription(subscription=self.subscription, retry=None, timeout=5)
        except Exception:  # pylint: disable=broad-except  # gone already, or Pub/Sub unreachable at exit
            pass


_REFRESHERS: Dict[Tuple, ModelRefresher] = {}
_REFRESHERS_LOCK = threading.Lock()


def shared_refresher(graph: ModelGraph, keep_logs: bool = False) -> ModelRefresher:
    """The process's refresher of this graph (its models by name, base directory, engine and
    signature), made once."""
    key = tuple((n.name, n.model.base_path or n.model.path, n.engine, n.model.signature)
                for n in graph.nodes) + (keep_logs,)
    with _REFRESHERS_LOCK:
        if key not in _REFRESHERS:
            _REFRESHERS[key] = ModelRefresher(graph, keep_logs)
        return _REFRESHERS[key]
