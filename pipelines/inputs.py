"""Which reader a batch job uses (TFRecord files of tf.Example, JSON Lines / CSV instances, BigQuery),
what the launcher checks of the inputs before launch, and whether chunks are redistributed."""

from typing import List, Optional, Sequence

import apache_beam as beam

from pipelines.bigquery_io import BIGQUERY, read_bigquery
from pipelines.options import OptionsError
from transforms.graph.model import record_spec
from transforms.records.dead_letters import WithDeadLetters
from transforms.records.chunk import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE
from transforms.sources.files import check_local_patterns, expand_patterns, is_remote
from transforms.sources.text import InstanceOptions, ReadKeyedInstances
from transforms.sources.text_formats import TFRECORD, format_of_path
from transforms.sources.tfrecord import ReadKeyedTFRecords

REDISTRIBUTE_CHOICES = ("auto", "yes", "no")
FILES_PER_WORKER = 4  # with fewer files than this per worker process, files alone cannot spread the work


def listed_inputs(patterns: Sequence[str], offline: bool = False) -> Optional[List[str]]:
    """The files the patterns match, listed by the launcher before launch, so that an empty glob
    fails here and not in a worker (NoInputFilesError). offline (a --dry_run): remote patterns are
    left to the workers and only local ones are checked; None then if any pattern is remote."""
    if offline and any(is_remote(p) for p in patterns):
        check_local_patterns(patterns)
        return None
    return expand_patterns(patterns)


def input_format_of(patterns: Sequence[str], given: Optional[str] = None,
                    listed: Optional[Sequence[str]] = None) -> str:
    """The given format, else the one every input's suffix names (the listed files, or the patterns
    when they were not listed); raises OptionsError when they mix formats."""
    if given:
        return given
    formats = {}
    for path in listed if listed is not None else patterns:
        formats.setdefault(format_of_path(path), path)
    if len(formats) > 1:
        examples = ", ".join(f"{fmt} ({path})" for fmt, path in sorted(formats.items()))
        raise OptionsError(f"the inputs mix formats: {examples}; give --input_format or separate runs")
    return next(iter(formats))


def should_redistribute(setting: str, workers: Optional[int], files: Optional[int], gpu: bool = False,
                        source_splits: bool = False) -> bool:
    """Whether chunks are spread over workers after reading (--redistribute). A file is read on one
    worker, so without it a job over few large files scores on few workers. It costs one shuffle of
    the records, so 'auto' redistributes only where more than one worker process can score and the
    source does not split its reads itself (source_splits: BigQuery): always for GPU workers, else
    when there are fewer than FILES_PER_WORKER files per worker, or the file or worker count is not
    known at launch (a dry run, an autoscaled fleet)."""
    if setting not in REDISTRIBUTE_CHOICES:
        raise OptionsError(f"--redistribute {setting!r}: choose one of {', '.join(REDISTRIBUTE_CHOICES)}")
    if setting != "auto":
        return setting == "yes"
    if workers == 1 or source_splits:
        return False
    if gpu or workers is None or files is None:
        return True
    return files < FILES_PER_WORKER * workers


def read_chunks(p: beam.Pipeline, job):
    """WithDeadLetters(RecordChunks, dead letters) of the job's inputs: every source emits chunks
    of up to --max_batch_size records and --max_batch_bytes of input, each record with its source;
    with job.redistribute, the chunks are then spread over the workers."""
    size = job.max_batch_size or DEFAULT_CHUNK_SIZE
    max_bytes = job.max_batch_bytes or DEFAULT_CHUNK_BYTES
    if job.input_format == BIGQUERY:
        chunks, dead = read_bigquery(p, job, size, max_bytes)
    elif job.input_format == TFRECORD:
        chunks, dead = p | "ReadTFRecords" >> ReadKeyedTFRecords(job.inputs, size, max_bytes)
    else:
        options = InstanceOptions(record_spec(job.graph), job.key_feature, job.included_fields,
                                  job.excluded_fields)
        chunks, dead = p | f"Read{job.input_format.upper()}" >> ReadKeyedInstances(
            job.inputs, job.input_format, options, size, max_bytes)
    if job.redistribute:
        chunks = chunks | "RedistributeChunks" >> beam.Reshuffle()
    return WithDeadLetters(chunks, dead)
