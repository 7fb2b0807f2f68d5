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
from transforms.sinks.files import WriteJsonLines


class LogRefusedDeadLettersFn(AccountedDoFn):

    def process(self, failed):
        self._accounting.refused_dead_letter()
        logging.error("BigQuery refused a dead letter: %s", failed)


@beam.ptransform_fn
def WriteDeadLetters(dead_letters, prefix: Optional[str], table: Optional[str] = None,
                     write_method: str = "FILE_LOADS", project: Optional[str] = None,
                     temp_location: Optional[str] = None):
    """Dead-letter rows -> `table` when given (created if needed), else PREFIX-SSSSS-of-NNNNN.jsonl."""
    if not table:
        return dead_letters | "ToFiles" >> WriteJsonLines(prefix)
    refused = dead_letters | "ToTable" >> WriteRowsToBigQuery(
        table, DEAD_LETTER_SCHEMA, write_method, project, temp_location)
    return refused | "LogRefused" >> beam.ParDo(LogRefusedDeadLettersFn())
