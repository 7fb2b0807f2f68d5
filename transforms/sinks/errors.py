"""The dead-letter sink: every stage's dead letters, as JSON Lines files or rows of a BigQuery table.

A dead letter BigQuery refuses has no table left to go to: it is logged in full and counted as
errors_table_refused.
"""

import logging
from typing import Optional

import apache_beam as beam

from transforms.runtime.accounting import AccountedDoFn
from transforms.sinks.bigquery import WriteRowsToBigQuery
from transforms.sinks.bigquery_schema import DEAD_LETTER_SCHEMA
from transforms.sinks.files import WriteJsonLines, WriteJsonLinesOfEach


class LogRefusedDeadLettersFn(AccountedDoFn):

    def process(self, failed):
        self._accounting.refused_dead_letter()
        logging.error("BigQuery refused a dead letter: %s", failed)


@beam.ptransform_fn
def WriteDeadLetters(dead_letters, prefix: Optional[str], table: Optional[str] = None,
                     write_method: str = "FILE_LOADS", project: Optional[str] = None,
                     temp_location: Optional[str] = None):
    """Dead-letter rows (a PCollection, or a tuple of them: every stage's) -> `table` when given
    (created if needed), else PREFIX-SSSSS-of-NNNNN.jsonl, each stage's written as they come
    (WriteJsonLinesOfEach)."""
    if not table:
        if isinstance(dead_letters, beam.PCollection):
            return dead_letters | "ToFiles" >> WriteJsonLines(prefix)
        return tuple(dead_letters) | "ToFiles" >> WriteJsonLinesOfEach(prefix)
    if not isinstance(dead_letters, beam.PCollection):
        dead_letters = tuple(dead_letters) | "AllDeadLetters" >> beam.Flatten()
    refused = dead_letters | "ToTable" >> WriteRowsToBigQuery(
        table, DEAD_LETTER_SCHEMA, write_method, project, temp_location)
    return refused | "LogRefused" >> beam.ParDo(LogRefusedDeadLettersFn())
