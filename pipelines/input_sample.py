"""A look at the first records before launch: a job whose every record would fail is stopped here.

A misspelt --key_feature, the wrong --input_format or a model that reads other features turns every
record into a dead letter; the error budget fails such a job at the end, after it has read
everything. The launcher reads the first SAMPLE_SIZE records it can (local files, or gs:// where it
lists them) through the same checks the job makes, and refuses to launch when none of them would
be scored, naming the most common problem (a misspelt key names the closest feature or field). A
sample with some good records launches: the bad ones become dead letters as usual. The first
bytes of the first files must not contradict the input format either (TFRecord read as CSV, JSON
Lines read as TFRecord: transforms.sources.sniff).
"""

import collections
import difflib
import itertools
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

from models.serving.examples import RecordError, check_example, feature_values, parse_example
from models.serving.feature_spec import Feature
from pipelines.inputs import instance_options
from transforms.records.keys import key_from_feature

from transforms.sources.sniff import contradiction, looks_like, read_head
from transforms.sources.text import InstanceOptions, iter_file_instances, keyed_example
from transforms.sources.parquet import UnreadableRows, iter_parquet_rows, keyed_row
from transforms.sources.text_formats import PARQUET, TFRECORD
from transforms.sources.framing import Record, read_records
from transforms.sources.tfrecord import open_records_stream

SAMPLE_SIZE = 20
MAX_FILES = 3  # sampled in order until SAMPLE_SIZE records are found


def record_problem(record: bytes, spec: Sequence[Feature], key_feature: Optional[str] = None) -> Optional[str]:
    """Why the job would not score one serialized record before it reaches a model, or None."""
    try:
        example = parse_example(record)
        if key_feature:
            if not feature_values(example, key_feature):
                return missing_key_problem("key feature", key_feature, example.features.feature)
            key_from_feature(example, key_feature)
        check_example(example, spec)
    except RecordError as e:
        return f"{e.stage}: {e}"
    return None


def missing_key_problem(what: str, key: str, names: Iterable[str]) -> str:
    """"key feature 'idd' is missing (the records hold [...]); did you mean --key_feature id?"."""
    names = sorted(names)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean --key_feature {close[0]}?" if close else ""
    return f"{what} {key!r} is missing (the records hold {names}){hint}"


def sample_tfrecords(paths: Sequence[str], size: int = SAMPLE_SIZE) -> Iterator[Tuple[str, bytes]]:
    """(path, record) for up to size records from the first MAX_FILES files; unreadable regions are
    skipped (they are dead letters of their own, not a sign that the flags are wrong)."""
    def records(path):
        with open_records_stream(path) as stream:
            for item in read_records(stream):
                if isinstance(item, Record):
                    yield path, item.data
    for path in paths[:MAX_FILES]:
        yield from itertools.islice(records(path), size)


def sample_problems(paths: Sequence[str], input_format: str, spec: Sequence[Feature],
                    key_feature: Optional[str], options: Optional[InstanceOptions] = None,
                    size: int = SAMPLE_SIZE) -> Tuple[int, List[Tuple[str, str]]]:
    """(records sampled, [(path, problem)] for those that would fail)."""
    if input_format == TFRECORD:
        sampled = [(path, record_problem(record, spec, key_feature))
                   for path, record in itertools.islice(sample_tfrecords(paths, size), size)]
    elif input_format == PARQUET:
        sampled = list(itertools.islice(sample_parquet_rows(paths, spec, options), size))
    else:
        sampled = list(itertools.islice(sample_instances(paths, input_format, spec, options), size))
    return len(sampled), [(path, problem) for path, problem in sampled if problem]


def sample_instances(paths: Sequence[str], input_format: str, spec: Sequence[Feature],
                     options: InstanceOptions) -> Iterator[Tuple[str, Optional[str]]]:
    """(path, problem or None) for each instance of the first MAX_FILES JSON Lines / CSV files,
    converted as the job converts them; a missing key field names its closest field."""
    for path in paths[:MAX_FILES]:
        for line, instance, raw in iter_file_instances(path, input_format, options.spec):
            if options.key_field and isinstance(instance, dict) and options.key_field not in instance:
                yield path, missing_key_problem("key field", options.key_field, instance)
                continue
            _, example = keyed_example(path, path, line, instance, raw, options)
            if isinstance(example, dict):  # a dead-letter row
                yield path, f"{example.get('stage')}: {example.get('error')}"
            else:
                yield path, record_problem(example, spec)


def sample_parquet_rows(paths: Sequence[str], spec: Sequence[Feature], options: InstanceOptions
                        ) -> Iterator[Tuple[str, Optional[str]]]:
    """(path, problem or None) for each row of the first MAX_FILES Parquet files, converted as the
    job converts them; unreadable files and row groups are skipped (dead letters of their own, as
    in sample_tfrecords); a missing key column names its closest column."""
    for path in paths[:MAX_FILES]:
        for row, item in iter_parquet_rows(path, batch_rows=SAMPLE_SIZE):
            if isinstance(item, UnreadableRows):
                continue
            if options.key_field and isinstance(item, dict) and options.key_field not in item:
                yield path, missing_key_problem("key field", options.key_field, item)
                continue
            _, example = keyed_row(path, path, row, item, options)
            if isinstance(example, dict):  # a dead-letter row
                yield path, f"{example.get('stage')}: {example.get('error')}"
            else:
                yield path, record_problem(example, spec)


def nothing_would_score(sampled: int, problems: Sequence[Tuple[str, str]]) -> Optional[str]:
    """The launch error when every sampled record failed, else None."""
    if not sampled or len(problems) < sampled:
        return None
    (problem, count), = collections.Counter(p for _, p in problems).most_common(1)
    files = sorted({path for path, _ in problems})
    records = f"{sampled} records" if sampled > 1 else "1 record"
    return (f"none of the {records} sampled from the start of the inputs would be scored ({', '.join(files)}): "
            f"{problem}{'' if count == sampled else f' ({count} of them; others fail too)'}. "
            "Check --key_feature, --input_format and the model's feature spec "
            "(or pass --max_dead_letter_fraction 1 to run anyway)")


def format_problem(paths: Sequence[str], input_format: str) -> Optional[str]:
    """Why the first files' bytes clearly cannot be read as input_format (transforms.sources.sniff), or None."""
    for path in paths[:MAX_FILES]:
        look = looks_like(read_head(path))
        if contradiction(input_format, look):
            flag = f"--input_format {look.format}" if look.format else "--input_format jsonl or csv"
            return f"{path} is read as {input_format}, but it looks like {look.description}: pass {flag}"
    return None


def job_sample_problem(job) -> Optional[str]:
    """Why the job should not launch, from its first listed input files: their bytes contradict
    its input format (format_problem), or nothing_would_score. None for BigQuery sources, inputs
    the launcher did not list, and jobs with the error budget off."""
    from transforms.graph.model import record_spec

    if not job.listed_inputs or job.max_dead_letter_fraction >= 1:
        return None
    wrong_format = format_problem(job.listed_inputs, job.input_format)
    spec = record_spec(job.graph)
    options = None if job.input_format == TFRECORD else instance_options(job)
    nothing = nothing_would_score(*sample_problems(job.listed_inputs, job.input_format, spec,
                                                   job.scoring_key_feature, options))
    if wrong_format and not nothing:
        return f"{wrong_format} (or pass --max_dead_letter_fraction 1 to read it as {job.input_format} anyway)."
    return " ".join(p for p in (wrong_format and wrong_format + ".", nothing) if p) or None
