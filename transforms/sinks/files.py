"""JSON Lines files: prediction rows (transforms.sinks.jsonl) and dead letters (transforms.sinks.errors)."""

import apache_beam as beam
from apache_beam.io import iobase
from apache_beam.io.textio import _TextSink
from apache_beam.pvalue import AsIter, AsSingleton
from apache_beam.transforms import window

from transforms.records.rows import to_json_line


@beam.ptransform_fn
def WriteJsonLines(rows, prefix: str, num_shards: int = 0, preformatted: bool = False):
    """Rows (dicts) -> PREFIX-SSSSS-of-NNNNN.jsonl. With preformatted, elements are already JSON
    Lines text (one or many lines each, as FormatRows writes a chunk's rows)."""
    if not preformatted:
        rows = rows | "ToJson" >> beam.Map(to_json_line)
    return rows | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl", num_shards=num_shards)


class WriteJsonLinesOfEach(beam.PTransform):
    """A tuple of PCollections of rows (dicts) -> one set of PREFIX-SSSSS-of-NNNNN.jsonl files, as
    WriteJsonLines of their Flatten writes, but each input is written in the stage that makes it
    and only the names of the files written meet. Beam's local FnApiRunner holds a multi-input
    Flatten whole before its consumer runs (1,500 dead letters of 64 KiB: 650 MB more peak
    RSS); this way rows stream out as they come. The steps are those of Beam's WriteImpl for
    runner-chosen shard counts (apache_beam.io.iobase, Beam 2.77 pinned)."""

    def __init__(self, prefix: str):
        super().__init__()
        self._sink = _TextSink(prefix, file_name_suffix=".jsonl")

    def expand(self, pcolls):
        do_once = pcolls[0].pipeline | "DoOnce" >> beam.Create([None])
        init = do_once | "InitializeWrite" >> beam.Map(lambda _, sink: sink.initialize_write(), self._sink)
        written = [pcoll
                   | f"ToJson{i}" >> beam.Map(to_json_line)
                   | f"Window{i}" >> beam.WindowInto(window.GlobalWindows())
                   | f"WriteBundles{i}" >> beam.ParDo(iobase._WriteBundleDoFn(self._sink), AsSingleton(init))
                   for i, pcoll in enumerate(pcolls)]
        files = (written
                 | "FilesWritten" >> beam.Flatten()
                 | "Pair" >> beam.Map(lambda name: (None, name))
                 | "OneList" >> beam.GroupByKey()
                 | "Extract" >> beam.FlatMap(lambda pair: pair[1]))
        pre_finalized = do_once | "PreFinalize" >> beam.FlatMap(
            iobase._pre_finalize, self._sink, AsSingleton(init), AsIter(files))
        return do_once | "FinalizeWrite" >> beam.FlatMap(
            iobase._finalize_write, self._sink, AsSingleton(init), AsIter(files), 1,
            AsSingleton(pre_finalized)).with_output_types(str)
