"""The scoring core in Beam: one DoFn scores chunks, for every job, batch or stream.

    RecordChunks -> ScoreChunks (ScoreChunksFn: score_chunk on each chunk, models from a
                    provider)                                               -> ScoredChunks
                                                                            -> dead letters
    ScoredChunks -> a sink (transforms.sinks.registry), through the one format-or-dead-letter
                    step (transforms.sinks.format)

ScoreRecords is the same path for keyed records from any PCollection: (key, serialized
tf.Example) are batched into chunks, scored and formatted as row dicts. Every transform here that
can reject a record returns WithDeadLetters(main, dead_letters).
"""

import concurrent.futures
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from models.serving.engines import DEFAULT_ENGINE
from models.serving.fingerprint import model_files
from models.serving.model import ServingModel
from models.serving.op_libraries import import_modules
from transforms.graph.model import ModelGraph, parallel_graph
from transforms.records.chunk import DEFAULT_CHUNK_SIZE, RecordChunk, ScoredChunk
from transforms.records.dead_letters import DEAD_LETTER_TAG, WithDeadLetters
from transforms.runtime.accounting import AccountedDoFn
from transforms.runtime.gpu import GpuSettings
from transforms.scoring.engines import BatchCall, reload_batch_call, serving_call, take_load_times
from transforms.scoring.executor import READ_KEYS, chunk_keys, score_chunk
from transforms.scoring.providers import FixedModels, Models
from transforms.scoring.timeouts import DEFAULT_MODEL_TIMEOUT_S, time_limited
from transforms.sinks.format import FormatRows

CallLog = List[Tuple[str, int, float, bool]]


def timed(model: str, call: BatchCall, log: CallLog) -> BatchCall:
    """call, appending (model, batch size, seconds, succeeded) to log on each use."""
    def run(records):
        start = time.perf_counter()
        try:
            outputs = call(records)
        except Exception:
            log.append((model, len(records), time.perf_counter() - start, False))
            raise
        log.append((model, len(records), time.perf_counter() - start, True))
        return outputs
    return run


def limited_call(node, call: BatchCall, timeout_s: Optional[float], keep_logs: bool = False) -> BatchCall:
    """A graph node's call under --model_timeout_s (transforms.scoring.timeouts): the copy serving
    now, reloaded by the node's engine after a call past the limit."""
    def reload(stale: BatchCall) -> BatchCall:
        return reload_batch_call(stale, node.engine, node.model.path, node.model.signature, keep_logs,
                                 node.model.engine_spec)
    return time_limited(serving_call(call), timeout_s, node.name, reload)


def as_graph(model: Union[ServingModel, ModelGraph], engine: Optional[str] = None) -> ModelGraph:
    """A ModelGraph as it is; a ServingModel as a graph of one node (on `engine`, default fast)."""
    if isinstance(model, ModelGraph):
        return model
    return parallel_graph([model], engine or DEFAULT_ENGINE)


class ScoreChunksFn(AccountedDoFn):
    """RecordChunk -> ScoredChunk, and its dead letters (tagged DEAD_LETTER_TAG).

    The models come from a provider (transforms.scoring.providers; default: the graph as
    launched), asked once per chunk, after `gpu` is applied; they load once per process
    (transforms.scoring.engines). With pipelined (batch jobs), chunk n's keys are read on the
    bundle's thread and its models run on a helper thread while chunk n-1's results go
    downstream; formatting and writing are fused into this stage and run on the bundle's thread,
    and TensorFlow releases the GIL, so the model and the Python around it overlap (a second
    helper thread measured no faster on 2 cores). At most two chunks are in flight. Streams use
    pipelined=False, so a batch is not held to the bundle's end. dead_letter_element(row,
    sources): what the dead-letter output carries for a row (default: the row). model_timeout_s:
    the longest a model call may take (`limited_call`; None or 0: no limit). op_libraries: the
    --op_library modules, imported in setup before any model loads (the ops the models need from
    known packages are imported as each loads: transforms.scoring.engines).
    """

    def __init__(self, graph: ModelGraph, key_feature: Optional[str] = None,
                 gpu: Optional[GpuSettings] = None, keep_logs: bool = False, pipelined: bool = True,
                 models=None, dead_letter_element: Optional[Callable[[Dict[str, Any], Any], Any]] = None,
                 model_timeout_s: Optional[float] = DEFAULT_MODEL_TIMEOUT_S, op_libraries: Sequence[str] = ()):
        self._graph = graph
        self._op_libraries = tuple(op_libraries)
        self._key_feature = key_feature
        self._gpu = gpu or GpuSettings()
        self._models = models or FixedModels(graph, keep_logs)
        self._keep_logs = keep_logs  # what a reload after a timeout loads
        self._model_timeout_s = model_timeout_s
        self._pipelined = pipelined
        self._dead_letter_element = dead_letter_element
        self._executor = None
        self._pending = None

    def setup(self):
        super().setup()
        self._gpu.apply()
        import_modules(self._op_libraries)
        self._models.setup()
        if self._pipelined:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="score-chunks")

    def score(self, chunk: RecordChunk, keys: Any = READ_KEYS, models: Optional[Models] = None
              ) -> Tuple[ScoredChunk, CallLog]:
        """score_chunk with these models (default: the provider's now); safe on any thread
        (touches no metrics)."""
        graph, calls, versions = models or self._models.current()
        log: CallLog = []
        timeout_s, keep_logs = self._model_timeout_s, self._keep_logs
        timed_calls = {n.name: timed(n.name, limited_call(n, calls[n.name], timeout_s, keep_logs), log)
                       for n in graph.nodes}
        scored = score_chunk(graph, timed_calls, chunk, self._key_feature, keys)
        return (scored._replace(versions=versions) if versions else scored), log

    def account(self, scored: ScoredChunk, log: CallLog) -> None:
        """Reports a scored chunk (on the bundle's thread), and the model loads and refreshes not
        yet reported."""
        self._accounting.models_loaded(self._named_loads(take_load_times()))
        self._accounting.model_refreshes(self._models.take_events())
        self._accounting.scored_in_this_process()
        self._accounting.model_calls(log)
        self._accounting.model_outputs({name: len(r.indices) for name, r in scored.models.items()})

    def _named_loads(self, loads: List[Tuple[str, float]]) -> List[Tuple[str, float, int]]:
        """(model path, seconds) of loads -> (model name, seconds, bytes on disk) for this graph's models."""
        named = []
        for path, seconds in loads:
            for node in self._models.graph.nodes:
                if node.model.path == path:
                    named.append((node.name, seconds, sum(size for _, size in model_files(path))))
        return named

    def start_bundle(self):
        self._pending = None

    def process(self, chunk, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        if not self._pipelined:
            yield from self._results(*self.score(chunk))
            return
        previous = self._pending
        # the keys are read here while the helper thread runs the models on the chunk before
        keys = chunk_keys(chunk, self._key_feature)
        self._pending = (self._executor.submit(self.score, chunk, keys, self._models.current()), timestamp, window)
        if previous is not None:
            yield from self._windowed_results(*previous)

    def finish_bundle(self):
        if self._pending is not None:
            previous, self._pending = self._pending, None
            yield from self._windowed_results(*previous)

    def _windowed_results(self, future, timestamp, window):
        for result in self._results(*future.result()):
            if isinstance(result, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(result.tag, WindowedValue(result.value, timestamp, [window]))
            else:
                yield WindowedValue(result, timestamp, [window])

    def _results(self, scored: ScoredChunk, log: CallLog):
        self.account(scored, log)
        element = self._dead_letter_element
        yield from self.reject(scored.dead, element and (lambda row: element(row, scored.sources)))
        if scored.models:
            yield scored._replace(dead=[])

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)


@beam.ptransform_fn
@beam.typehints.with_input_types(RecordChunk)
def ScoreChunks(chunks, graph: ModelGraph, key_feature: Optional[str] = None,
                gpu: Optional[GpuSettings] = None, keep_logs: bool = False, pipelined: bool = True,
                models=None, dead_letter_element=None, model_timeout_s: Optional[float] = DEFAULT_MODEL_TIMEOUT_S,
                op_libraries: Sequence[str] = ()):
    """RecordChunks -> WithDeadLetters(ScoredChunks, dead letters at decode, validate, convert,
    infer, postprocess). models: a provider (transforms.scoring.providers; default: the graph
    as launched); model_timeout_s: the longest a model call may take (None or 0: no limit);
    op_libraries: --op_library modules the workers import before the models load."""
    result = chunks | "+".join(graph.names) >> beam.ParDo(ScoreChunksFn(
        graph, key_feature, gpu, keep_logs, pipelined, models, dead_letter_element, model_timeout_s, op_libraries)
    ).with_outputs(DEAD_LETTER_TAG, main="scored")
    return WithDeadLetters(result.scored, result[DEAD_LETTER_TAG])


def to_chunk(batch: Sequence[Tuple[str, bytes]]) -> RecordChunk:
    return RecordChunk([key for key, _ in batch], [record for _, record in batch])


@beam.ptransform_fn
@beam.typehints.with_input_types(Tuple[str, bytes])
def ScoreRecords(records, model: Union[ServingModel, ModelGraph], key_feature: Optional[str] = None,
                 max_batch_size: int = DEFAULT_CHUNK_SIZE, row_per_model: bool = False,
                 gpu: Optional[GpuSettings] = None, engine: Optional[str] = None):
    """(key, serialized tf.Example) -> WithDeadLetters(prediction row dicts, dead letters).

    model: one ServingModel (on `engine`, default fast) or a ModelGraph. Records are batched into
    chunks of up to max_batch_size and go through the same executor and row formatting as the
    batch and stream jobs. Per model, records in = rows with its outputs + dead letters naming it
    (a record that is not a tf.Example is one dead letter without a model).
    """
    graph = as_graph(model, engine)
    chunks = (records
              # fixed-size chunks (the last of a bundle may be smaller), as every source makes them
              | "Batch" >> beam.BatchElements(min_batch_size=max_batch_size, max_batch_size=max_batch_size)
              | "ToChunks" >> beam.Map(to_chunk))
    scored, unscored = chunks | "Score" >> ScoreChunks(graph, key_feature, gpu)
    rows, unformatted = scored | "ToRows" >> FormatRows(graph, row_per_model, as_dicts=True)
    return WithDeadLetters(rows, (unscored, unformatted) | "DeadLetters" >> beam.Flatten())
