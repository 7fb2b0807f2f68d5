"""The progress line and the end-of-run counter table (pure; a clock is injected)."""

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
