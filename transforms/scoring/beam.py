"""The scoring core in Beam: one DoFn scores chunks, one formats rows, for every job.

    RecordChunks -> ScoreChunks (ScoreChunksFn: score_chunk on each chunk)  -> ScoredChunks
                                                                            -> dead letters
    ScoredChunks -> FormatRows (FormatRowsFn: JSON Lines text, or row dicts) -> sinks
                                                                            -> dead letters
    ScoredChunks -> FormatPredictionLogs (one model; --output_format tfrecord) -> (key, PredictionLog)

ScoreRecords is the same path for keyed records from any PCollection: (key, serialized
tf.Example) are batched into chunks, scored and formatted as row dicts. Every transform here that
can reject a record returns WithDeadLetters(main, dead_letters).
"""

import concurrent.futures
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from models.fingerprint import model_files
from models.serving_model import ServingModel
from transforms.graph.model import ModelGraph, parallel_graph
from transforms.records.chunk import DEFAULT_CHUNK_SIZE, PREDICTION_LOG, RecordChunk, ScoredChunk
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, WithDeadLetters, dead_letter
from transforms.records.rows import rows_block, rows_from_block
from transforms.runtime.accounting import AccountedDoFn
from transforms.runtime.gpu import GpuSettings
from transforms.scoring.engines import DEFAULT_ENGINE, BatchCall, batch_calls, take_load_times
from transforms.scoring.executor import READ_KEYS, chunk_keys, score_chunk

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


def as_graph(model: Union[ServingModel, ModelGraph], engine: Optional[str] = None) -> ModelGraph:
    """A ModelGraph as it is; a ServingModel as a graph of one node (on `engine`, default fast)."""
    if isinstance(model, ModelGraph):
        return model
    return parallel_graph([model], engine or DEFAULT_ENGINE)


class ScoreChunksFn(AccountedDoFn):
    """RecordChunk -> ScoredChunk, and its dead letters (tagged DEAD_LETTER_TAG).

    Models load once per process (transforms.scoring.engines), after `gpu` is applied. With
    pipelined (batch jobs), chunk n's keys are read on the bundle's thread and its models run on a
    helper thread while chunk n-1's results go downstream; formatting and writing are fused into
    this stage and run on the bundle's thread, and TensorFlow releases the GIL, so the model and
    the Python around it overlap (a second helper thread measured no faster on 2 cores). At most
    two chunks are in flight. Streams use pipelined=False, so a batch is not held to the bundle's end.
    """

    def __init__(self, graph: ModelGraph, key_feature: Optional[str] = None,
                 gpu: Optional[GpuSettings] = None, keep_logs: bool = False, pipelined: bool = True):
        self._graph = graph
        self._key_feature = key_feature
        self._gpu = gpu or GpuSettings()
        self._keep_logs = keep_logs
        self._pipelined = pipelined
        self._calls: Dict[str, BatchCall] = {}
        self._executor = None
        self._pending = None

    def setup(self):
        super().setup()
        self._gpu.apply()
        self._calls = batch_calls(self._graph, self._keep_logs)
        if self._pipelined:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="score-chunks")

    def score(self, chunk: RecordChunk, keys: Any = READ_KEYS) -> Tuple[ScoredChunk, CallLog]:
        """score_chunk with this DoFn's models; safe on any thread (touches no metrics)."""
        log: CallLog = []
        calls = {name: timed(name, call, log) for name, call in self._calls.items()}
        return score_chunk(self._graph, calls, chunk, self._key_feature, keys), log

    def account(self, scored: ScoredChunk, log: CallLog) -> None:
        """Reports a scored chunk (on the bundle's thread), and the model loads not yet reported."""
        self._accounting.models_loaded(self._named_loads(take_load_times()))
        self._accounting.scored_in_this_process()
        self._accounting.model_calls(log)
        self._accounting.dead_letters(scored.dead)
        self._accounting.model_outputs({name: len(r.indices) for name, r in scored.models.items()})

    def _named_loads(self, loads: List[Tuple[str, float]]) -> List[Tuple[str, float, int]]:
        """(model path, seconds) of loads -> (model name, seconds, bytes on disk) for this graph's models."""
        named = []
        for path, seconds in loads:
            for node in self._graph.nodes:
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
        self._pending = (self._executor.submit(self.score, chunk, keys), timestamp, window)
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
        for row in scored.dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row)
        if scored.models:
            yield scored._replace(dead=[])

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def format_rows(graph: ModelGraph, scored: ScoredChunk, row_per_model: bool = False,
                with_source: bool = False, scalars: Optional[Dict[str, Optional[bool]]] = None) -> Tuple[str, int]:
    """(JSON Lines text, number of lines) of a scored chunk's prediction rows (transforms.records.rows)."""
    return rows_block(scored.keys, scored.models, scored.records, graph.passthrough,
                      graph.passthrough_scalars() if scalars is None else scalars, row_per_model,
                      scored.sources if with_source else None)


def unformattable_dead_letters(scored: ScoredChunk, error: BaseException) -> List[Dict[str, Any]]:
    """A dead letter (postprocess) per row of a chunk whose rows could not be formatted."""
    return [dead_letter(POSTPROCESS, error, key=scored.keys[i], raw=scored.records[i],
                        source=None if scored.sources is None else scored.sources[i])
            for i in scored.row_positions()]


class FormatChunkFn(AccountedDoFn):
    """ScoredChunk -> what a sink writes of its prediction rows (format()); a chunk whose rows
    cannot be formatted becomes dead letters (postprocess), one per row."""

    def format(self, scored: ScoredChunk) -> Tuple[Iterable[Any], int]:
        """(the elements to emit, the number of records they hold predictions for)."""
        raise NotImplementedError

    def process(self, scored: ScoredChunk):
        try:
            elements, predictions = self.format(scored)
        except Exception as e:  # pylint: disable=broad-except  # each row of the chunk is accounted for
            dead = unformattable_dead_letters(scored, e)
            self._accounting.dead_letters(dead)
            for row in dead:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row)
            return
        self._accounting.predictions(predictions)
        yield from elements


class FormatRowsFn(FormatChunkFn):
    """ScoredChunk -> its prediction rows: one text element of JSON lines per chunk (files), or
    one dict per row (as_dicts: BigQuery, Pub/Sub, the keyed API)."""

    def __init__(self, graph: ModelGraph, row_per_model: bool = False, with_source: bool = False,
                 as_dicts: bool = False):
        self._graph = graph
        self._row_per_model = row_per_model
        self._with_source = with_source
        self._as_dicts = as_dicts
        self._scalars = graph.passthrough_scalars()

    def format(self, scored: ScoredChunk) -> Tuple[Iterable[Any], int]:
        text, count = format_rows(self._graph, scored, self._row_per_model, self._with_source, self._scalars)
        # conservation counts records: with row_per_model a record has one line per model
        predictions = len(scored.row_positions()) if self._row_per_model else count
        if self._as_dicts:
            return rows_from_block(text, count), predictions
        return ([text] if count else []), predictions


class FormatPredictionLogsFn(AccountedDoFn):
    """ScoredChunk of a one-model job whose engine kept its logs -> (key, PredictionLog) per record."""


    def process(self, scored: ScoredChunk):
        ((_, result),) = scored.models.items()
        logs = result.outputs[PREDICTION_LOG]
        self._accounting.predictions(len(result.indices))
        for row, position in enumerate(result.indices):
            yield scored.keys[position], logs[row]


@beam.ptransform_fn
@beam.typehints.with_input_types(RecordChunk)
def ScoreChunks(chunks, graph: ModelGraph, key_feature: Optional[str] = None,
                gpu: Optional[GpuSettings] = None, keep_logs: bool = False, pipelined: bool = True):
    """RecordChunks -> WithDeadLetters(ScoredChunks, dead letters at decode, validate, convert,
    infer, postprocess)."""
    result = chunks | "+".join(graph.names) >> beam.ParDo(
        ScoreChunksFn(graph, key_feature, gpu, keep_logs, pipelined)).with_outputs(DEAD_LETTER_TAG, main="scored")
    return WithDeadLetters(result.scored, result[DEAD_LETTER_TAG])


@beam.ptransform_fn
@beam.typehints.with_input_types(ScoredChunk)
def FormatRows(scored, graph: ModelGraph, row_per_model: bool = False, with_source: bool = False,
               as_dicts: bool = False):
    """ScoredChunks -> WithDeadLetters(JSON Lines text per chunk, or row dicts; dead letters)."""
    result = scored | "Format" >> beam.ParDo(FormatRowsFn(graph, row_per_model, with_source, as_dicts)
                                             ).with_outputs(DEAD_LETTER_TAG, main="rows")
    return WithDeadLetters(result.rows, result[DEAD_LETTER_TAG])


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
