"""The progress line and the end-of-run counter table (pure; a clock is injected)."""

import math

from transforms.runtime import metrics


def test_progress_prints_at_most_once_per_interval(capsys):
    now = [100.0]
    progress = metrics.Progress(interval_s=10.0, clock=lambda: now[0])
    progress.add(metrics.RECORDS_READ, 500)
    now[0] = 105.0
    progress.add(metrics.RECORDS_READ, 500)
    assert capsys.readouterr().err == ""  # not yet 10 s
    now[0] = 110.0
    progress.add(metrics.PREDICTIONS_WRITTEN, 900)
    line = capsys.readouterr().err.strip()
    assert line == "progress: predictions_written 900, records_read 1,000 (100 records/s)"
    progress.reset()
    now[0] = 200.0
    progress.add(metrics.RECORDS_READ, 1)
    assert capsys.readouterr().err == ""  # a new run starts its own clock


def test_counter_table_lists_every_counter_sorted():
    table = metrics.format_counters({"records_read": 1234567, "dead_letters_read": 2})
    lines = table.splitlines()
    assert [line.split()[0] for line in lines] == ["dead_letters_read", "records_read"]
    assert lines[1].split()[1] == "1,234,567"


def test_counters_whose_names_do_not_say_what_they_count_have_a_note_beside_them():
    from transforms.runtime.accounting import COUNTER_NOTES, FAILED_BATCHES, counter_table

    lines = counter_table({FAILED_BATCHES: 11, "dead_letters_infer": 1}).splitlines()
    assert lines[0].split() == ["dead_letters_infer", "1"]  # its name says it: no note
    name, value, note = lines[1].split(maxsplit=2)
    assert (name, value) == (FAILED_BATCHES, "11")
    assert note == f"({COUNTER_NOTES[FAILED_BATCHES]})"
    assert "split to isolate the bad records" in note
    assert metrics.format_counters({FAILED_BATCHES: 11}, notes={}).split() == [FAILED_BATCHES, "11"]


def test_a_failed_batch_is_a_model_call_that_failed_and_was_split_by_isolation():
    """What the note and the README say, on the real isolation: one bad record in a batch of n makes
    about log2 n + 1 calls fail (the demo's 11 for its few bad records in batches of 333)."""
    from transforms.scoring.isolate import isolate_failures

    failed = []

    def call(items):
        if 7 in items:
            failed.append(len(items))
            raise ValueError("bad record 7")
        return items

    _, bad = isolate_failures(call, list(range(333)))
    assert [item for item, _ in bad] == [7]
    assert failed[0] == 333 and failed[-1] == 1
    assert math.floor(math.log2(333)) + 1 <= len(failed) <= math.ceil(math.log2(333)) + 1
