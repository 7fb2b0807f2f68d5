"""Which reader a batch job uses (TFRecord files of tf.Example, JSON Lines / CSV / Parquet instances, BigQuery),
what the launcher checks of the inputs before launch, and whether chunks are redistributed."""

from typing import List, Optional, Sequence

import apache_beam as beam

from pipelines.bigquery_io import BIGQUERY, read_bigquery
from pipelines.options import OptionsError
from transforms.graph.model import decodes_images, record_spec, takes_arrays
from transforms.records.dead_letters import WithDeadLetters
from transforms.records.chunk import DECODED_IMAGE_CHUNK_BYTES, DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_SIZE
from transforms.sources.files import check_local_patterns, expand_patterns, is_remote
from transforms.sources.text import InstanceOptions, ReadKeyedInstances
from transforms.sources.sniff import looks_like, read_head
from transforms.sources.parquet import ReadKeyedParquet
from transforms.sources.text_formats import PARQUET, TFRECORD, suffix_format
from transforms.sources.tfrecord import ReadKeyedTFRecords

REDISTRIBUTE_CHOICES = ("auto", "yes", "no")
FILES_PER_WORKER = 4  # with fewer files than this per worker process, files alone cannot spread the work
SNIFFED_FILES = 3  # files without a telling suffix whose first bytes the launcher reads


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
    """The given format, else the one every input names: by its suffix, or for files whose suffix
    names none, by the first bytes of the first SNIFFED_FILES of them (the others are taken to be
    alike; patterns that were not listed, as TFRecord). Raises OptionsError when the inputs mix
    formats, or when a file's first bytes are text of no format the job reads."""
    if given:
        return given
    formats, unnamed = {}, []
    for path in listed if listed is not None else patterns:
        fmt = suffix_format(path)
        if fmt is None:
            unnamed.append(path)
        else:
            formats.setdefault(fmt, path)
    for path in unnamed[:SNIFFED_FILES] if listed is not None else unnamed[:1]:
        formats.setdefault(content_format(path) if listed is not None else TFRECORD, path)
    if len(formats) > 1:
        examples = ", ".join(f"{fmt} ({path})" for fmt, path in sorted(formats.items()))
        raise OptionsError(f"the inputs mix formats: {examples}; give --input_format or separate runs")
    return next(iter(formats))


def content_format(path: str) -> str:
    """The format a file's first bytes show (binary data that is not TFRecord, or an unreadable or
    empty file: TFRecord, whose reader reports it); raises OptionsError for text of no format we read."""
    look = looks_like(read_head(path))
    if look.format:
        return look.format
    if look.text:
        raise OptionsError(f"{path}: its name does not say its format (.tfrecord, .jsonl, .json, .ndjson, .csv, "
                           f".parquet) and it looks like {look.description}; give --input_format tfrecord, jsonl, "
                           "csv or parquet")
    return TFRECORD


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


def instance_options(job) -> InstanceOptions:
    """How a batch job converts JSON Lines / CSV instances and Parquet rows. The key field stays in
    the example for outputs that echo it (PredictionLogs, examples), so each carries its key; models parse only the
    features they read."""
    return InstanceOptions(record_spec(job.graph), job.key_feature, job.included_fields, job.excluded_fields,
                           keep_key=job.sink.echoes_inputs, bulk_arrays=takes_arrays(job.graph))


def default_batch_bytes(graph) -> int:
    """--max_batch_bytes when not given (CPU workers; GPU ones have their own): smaller for models
    that decode images in their signature, whose batches grow tenfold once decoded."""
    return DECODED_IMAGE_CHUNK_BYTES if decodes_images(graph) else DEFAULT_CHUNK_BYTES


def read_chunks(p: beam.Pipeline, job):
    """WithDeadLetters(RecordChunks, dead letters) of the job's inputs: every source emits chunks
    of up to --max_batch_size records and --max_batch_bytes of input, each record with its source;
    with job.redistribute, the chunks are then spread over the workers."""
    size = job.max_batch_size or DEFAULT_CHUNK_SIZE
    max_bytes = job.max_batch_bytes or default_batch_bytes(job.graph)
    if job.input_format == BIGQUERY:
        chunks, dead = read_bigquery(p, job, size, max_bytes)
    elif job.input_format == TFRECORD:
        chunks, dead = p | "ReadTFRecords" >> ReadKeyedTFRecords(job.inputs, size, max_bytes)
    elif job.input_format == PARQUET:
        chunks, dead = p | "ReadParquet" >> ReadKeyedParquet(job.inputs, instance_options(job), size, max_bytes)
    else:
        chunks, dead = p | f"Read{job.input_format.upper()}" >> ReadKeyedInstances(
            job.inputs, job.input_format, instance_options(job), size, max_bytes)
    if job.redistribute:
        chunks = chunks | "RedistributeChunks" >> beam.Reshuffle()
    return WithDeadLetters(chunks, dead)
