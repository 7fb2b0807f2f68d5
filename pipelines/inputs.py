"""Which reader a batch job uses: TFRecord files of tf.Example, or JSON Lines / CSV instances."""

from typing import Optional, Sequence

import apache_beam as beam

from pipelines.bigquery_io import BIGQUERY, read_bigquery
from pipelines.options import OptionsError
from transforms.graph.model import record_spec
from transforms.records.chunk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE
from transforms.sources.files import expand_patterns
from transforms.sources.text import InstanceOptions, ReadKeyedInstances
from transforms.sources.text_formats import TFRECORD, format_of_path
from transforms.sources.tfrecord import ReadKeyedTFRecords


def input_format_of(patterns: Sequence[str], given: Optional[str] = None) -> str:
    """The given format, else the one every matched file's suffix names; raises OptionsError
    when the files mix formats."""
    if given:
        return given
    formats = {}
    for path in expand_patterns(patterns):
        formats.setdefault(format_of_path(path), path)
    if len(formats) > 1:
        examples = ", ".join(f"{fmt} ({path})" for fmt, path in sorted(formats.items()))
        raise OptionsError(f"the inputs mix formats: {examples}; give --input_format or separate runs")
    return next(iter(formats))


def read_chunks(p: beam.Pipeline, job):
    """WithDeadLetters(RecordChunks, dead letters) of the job's inputs: every source emits chunks
    of up to --max_batch_size records and --max_batch_bytes of input, each record with its source."""
    size = job.max_batch_size or DEFAULT_CHUNK_SIZE
    max_bytes = job.max_batch_bytes or DEFAULT_CHUNK_BYTES
    if job.input_format == BIGQUERY:
        return read_bigquery(p, job, size, max_bytes)
    if job.input_format == TFRECORD:
        return p | "ReadTFRecords" >> ReadKeyedTFRecords(job.inputs, size, max_bytes)
    options = InstanceOptions(record_spec(job.graph), job.key_feature, job.included_fields,
                              job.excluded_fields)
    return p | f"Read{job.input_format.upper()}" >> ReadKeyedInstances(
        job.inputs, job.input_format, options, size, max_bytes)
