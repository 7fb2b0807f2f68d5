"""What a sink is to a job: one Sink per output, registered in transforms.sinks.registry.

A sink knows its name (the --output_format value, or "bigquery" for --output_table), the
suffix of its files, the problems a job would meet writing through it (told at launch, before
anything runs), whether it needs every output's shape at launch (a schema) or the engines'
PredictionLogs, and how it writes scored chunks. write() returns the dead letters of what it
could not write, so a job reads: read -> score -> sink.write -> dead-letter sink, whatever the
format. Elements are made through the one format-or-dead-letter step (transforms.sinks.format).
"""

import dataclasses
from typing import List, Optional, Tuple

import apache_beam as beam


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    """What a sink needs of a job besides its model graph (the flags of the same names)."""
    output: Optional[str] = None  # the file prefix: PREFIX-SSSSS-of-NNNNN<suffix>
    num_shards: int = 0
    row_per_model: bool = False
    with_source: bool = False
    output_features: Tuple[Tuple[str, str], ...] = ()  # examples: (output, feature name)
    output_compression: Optional[str] = None  # examples: None or "gzip"
    table: Optional[str] = None  # BigQuery: PROJECT:DATASET.TABLE
    write_method: str = "FILE_LOADS"
    project: Optional[str] = None
    temp_location: Optional[str] = None


class Sink:
    """One output: subclasses set the class attributes and define write()."""

    name = ""
    suffix = ""  # of its files ("" where it writes no files)
    writes_files = True  # chosen with --output_format NAME (else with a flag of its own)
    needs_schema = False  # every output's rank is resolved at launch (transforms.scoring.output_ranks)
    keeps_logs = False  # the engines return their PredictionLogs for it
    echoes_inputs = False  # it writes each input example back (so JSON/CSV keys stay in the examples)

    def flag_problems(self, config: SinkConfig) -> List[str]:
        """What is wrong with the flags for this sink (checked before the models load)."""
        return []

    def graph_problems(self, graph, config: SinkConfig) -> List[str]:
        """What this sink cannot write of this graph's results (checked at launch)."""
        return []

    def location(self, config: SinkConfig) -> str:
        """Where the predictions go, as a user finds them: a file pattern, or a table."""
        return f"{config.output}-*{self.suffix}"

    def write(self, scored, graph, config: SinkConfig):
        """ScoredChunks -> the PCollection of dead letters of what could not be written."""
        raise NotImplementedError


def one_model_problem(sink: Sink, graph, config: SinkConfig) -> Optional[str]:
    """Why a sink that writes one model's results per input record cannot write this graph's."""
    node = graph.nodes[0]
    if len(graph.nodes) > 1 or node.postprocess or graph.passthrough or config.row_per_model \
            or config.with_source:
        return (f"--output_format {sink.name} writes one model's results per record; a graph "
                "(several models, post-processing, passthrough, --row_per_model, --with_source) writes jsonl")
    return None


class WriteToSink(beam.PTransform):
    """ScoredChunks -> `sink` (sink.write); returns the dead letters of what it could not write."""

    def __init__(self, sink: Sink, graph, config: SinkConfig):
        super().__init__()
        self._sink, self._graph, self._config = sink, graph, config

    def expand(self, scored):
        return self._sink.write(scored, self._graph, self._config)
