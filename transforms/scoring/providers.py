"""Model providers: where a scoring step gets the models it runs on each chunk.

    provider.setup()            on the worker, once, after the GPU settings are applied
    provider.current()       -> (graph, {model name: batch call}, versions or None), per chunk
    provider.take_events()   -> refresh events to report, once each

FixedModels serves the graph as launched (every batch job). RefreshingModels serves the newest
version that passed its checks (transforms.scoring.refresh): a swap takes effect between
chunks, so one chunk is scored by one version, and `versions` names it for the rows. A routed
provider (a model per key) fits the same slot. Providers are pickled with their DoFn before
setup(), so they hold settings until then, never loaded models.
"""

from typing import Dict, List, Optional, Tuple

from transforms.graph.model import ModelGraph
from transforms.scoring.engines import BatchCall, batch_calls
from transforms.scoring.refresh import RefreshEvent, RefreshSettings, shared_refresher

Models = Tuple[ModelGraph, Dict[str, BatchCall], Optional[Dict[str, str]]]


class FixedModels:
    """The graph's models as launched, loaded once per process (transforms.scoring.engines)."""

    def __init__(self, graph: ModelGraph, keep_logs: bool = False):
        self.graph = graph
        self._keep_logs = keep_logs
        self._calls: Dict[str, BatchCall] = {}

    def setup(self) -> None:
        self._calls = batch_calls(self.graph, self._keep_logs)

    def current(self) -> Models:
        return self.graph, self._calls, None

    def take_events(self) -> List[RefreshEvent]:
        return []


class RefreshingModels:
    """The newest checked versions of the graph's models, from the process's one refresher."""

    def __init__(self, graph: ModelGraph, settings: RefreshSettings, keep_logs: bool = False):
        self.graph = graph
        self._settings = settings
        self._keep_logs = keep_logs
        self._refresher = None
        self._generation = -1
        self._calls: Dict[str, BatchCall] = {}

    def setup(self) -> None:
        # from the process's current versions, not those of launch (Beam may set DoFns up again)
        self._refresher = shared_refresher(self.graph, self._keep_logs)
        self._refresher.start(self._settings)
        self.current()

    def current(self) -> Models:
        generation, graph = self._refresher.current()
        if generation != self._generation:  # between chunks: a chunk is scored by one version
            self._generation, self.graph = generation, graph
            self._calls = batch_calls(graph, self._keep_logs)
        return self.graph, self._calls, {n.name: n.model.version_name for n in self.graph.nodes}

    def take_events(self) -> List[RefreshEvent]:
        return self._refresher.take_events()


def model_provider(graph: ModelGraph, keep_logs: bool = False,
                   refresh: RefreshSettings = RefreshSettings()):
    """RefreshingModels when refresh is on, else FixedModels."""
    return RefreshingModels(graph, refresh, keep_logs) if refresh.on else FixedModels(graph, keep_logs)
