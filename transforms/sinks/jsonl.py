"""--output_format jsonl (the default): prediction rows as JSON Lines, PREFIX-SSSSS-of-NNNNN.jsonl."""

from transforms.sinks.base import Sink, SinkConfig
from transforms.sinks.files import WriteJsonLines
from transforms.sinks.format import FormatRows


class JsonLinesSink(Sink):
    name = "jsonl"
    suffix = ".jsonl"

    def write(self, scored, graph, config: SinkConfig):
        rows, unformatted = scored | "ToRows" >> FormatRows(graph, config.row_per_model, config.with_source)
        rows | "WriteRows" >> WriteJsonLines(config.output, config.num_shards, preformatted=True)
        return unformatted
