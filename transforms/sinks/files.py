"""JSON Lines files: prediction rows (transforms.sinks.jsonl) and dead letters (transforms.sinks.errors)."""

import apache_beam as beam

from transforms.records.rows import to_json_line


@beam.ptransform_fn
def WriteJsonLines(rows, prefix: str, num_shards: int = 0, preformatted: bool = False):
    """Rows (dicts) -> PREFIX-SSSSS-of-NNNNN.jsonl. With preformatted, elements are already JSON
    Lines text (one or many lines each, as FormatRows writes a chunk's rows)."""
    if not preformatted:
        rows = rows | "ToJson" >> beam.Map(to_json_line)
    return rows | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", num_shards=num_shards)
