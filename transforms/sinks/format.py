"""The one format-or-dead-letter step every sink's elements are made by.

    ScoredChunks -> FormatChunkFn.format (a sink's own: JSON Lines text, row dicts, Arrow tables,
                    PredictionLogs, examples)  -> elements to write
                                               -> dead letters (postprocess), one per row of a
                                                  chunk that could not be formatted

A chunk's predictions are counted only once its elements are made, so a chunk that fails to
format is counted as dead letters and never as predictions too.
"""

from typing import Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam

from transforms.graph.model import ModelGraph
from transforms.records.chunk import ScoredChunk
from transforms.records.dead_letters import DEAD_LETTER_TAG, POSTPROCESS, WithDeadLetters, dead_letter
from transforms.records.rows import rows_block, rows_from_block
from transforms.runtime.accounting import AccountedDoFn


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

    def dead_letter_element(self, row: Dict[str, Any], scored: ScoredChunk) -> Any:
        """What the dead-letter output carries for a row of this chunk (the row itself)."""
        return row

    def process(self, scored: ScoredChunk):
        try:
            elements, predictions = self.format(scored)
        except Exception as e:  # pylint: disable=broad-except  # each row of the chunk is accounted for
            yield from self.reject(unformattable_dead_letters(scored, e),
                                   lambda row: self.dead_letter_element(row, scored))
            return
        yield from self.emit_predictions(elements, predictions)


def format_rows(graph: ModelGraph, scored: ScoredChunk, row_per_model: bool = False,
                with_source: bool = False, scalars: Optional[Dict[str, Optional[bool]]] = None) -> Tuple[str, int]:
    """(JSON Lines text, number of lines) of a scored chunk's prediction rows (transforms.records.rows)."""
    return rows_block(scored.keys, scored.models, scored.records, graph.passthrough,
                      graph.passthrough_scalars() if scalars is None else scalars, row_per_model,
                      scored.sources if with_source else None)


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


def format_chunks(scored, label: str, fn: FormatChunkFn) -> WithDeadLetters:
    """ScoredChunks -> WithDeadLetters(fn's elements, the dead letters of chunks it could not format)."""
    result = scored | label >> beam.ParDo(fn).with_outputs(DEAD_LETTER_TAG, main="formatted")
    return WithDeadLetters(result.formatted, result[DEAD_LETTER_TAG])


@beam.ptransform_fn
@beam.typehints.with_input_types(ScoredChunk)
def FormatRows(scored, graph: ModelGraph, row_per_model: bool = False, with_source: bool = False,
               as_dicts: bool = False):
    """ScoredChunks -> WithDeadLetters(JSON Lines text per chunk, or row dicts; dead letters)."""
    return format_chunks(scored, "Format", FormatRowsFn(graph, row_per_model, with_source, as_dicts))
