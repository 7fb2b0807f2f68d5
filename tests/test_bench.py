"""The benchmark harness's own parts (bench/): which modes run, per-repeat ratios and their
spread, the Parquet data of A-dense and its raw-arrays measurement, GPU utilisation sampling and
the workers' own peak RSS. No timings are asserted: only what is counted and computed."""

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import gpu_util, run, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def a_run(rate, startup=0.0):
    return {"records": 100, "seconds": 1.0, "startup_seconds": startup, "examples_per_s": rate,
            "peak_rss_mb": 10.0}


def test_every_workload_has_sizes_for_exactly_its_modes_and_its_reference_first():
    for scale, sizes in run.SIZES.items():
        assert set(sizes) == set(workloads.WORKLOADS), scale
        for name, workload in workloads.WORKLOADS.items():
            assert set(sizes[name]) == set(workload.modes), (scale, name)
            assert all(n >= 4 * workload.tiny_records for n in sizes[name].values()), (scale, name)
    assert workloads.WORKLOADS["A-dense"].reference == "raw-arrays"
    assert workloads.WORKLOADS["C"].modes == ("raw", "fast")


def test_a_mode_subset_keeps_the_workload_order_and_its_reference():
    a = workloads.WORKLOADS["A"]
    assert run.select_modes(a, None) == a.modes
    assert run.select_modes(a, ["fast-parquet", "fast"]) == ("raw", "fast", "fast-parquet")
    assert run.select_modes(a, ["raw"]) == ("raw",)
    assert run.select_modes(workloads.WORKLOADS["A-dense"], ["fast"]) == ()


def test_a_mode_no_chosen_workload_runs_is_refused_naming_what_they_run():
    chosen = run.parse_workloads("A-dense,C")
    assert run.parse_modes("fast, raw-arrays", chosen) == ["fast", "raw-arrays"]
    with pytest.raises(run.BenchError, match=r"fast-dense.*A-dense: raw-arrays, fast-parquet-io"):
        run.parse_modes("fast,fast-dense", chosen)
    with pytest.raises(run.BenchError, match="unknown"):
        run.parse_workloads("A,D")


def test_ratios_are_per_repeat_against_that_repeats_reference():
    a = workloads.WORKLOADS["A"]
    runs = {"raw": [a_run(1000), a_run(500), a_run(800)],
            "fast": [a_run(400), a_run(300), a_run(400)],
            "graph-x2": [a_run(100), a_run(100), a_run(100)]}
    summary = run.summarize(a, ("raw", "fast", "graph-x2"), runs)
    fast = summary["ratios"]["fast_vs_raw"]
    assert fast["per_repeat"] == pytest.approx([0.4, 0.6, 0.5])
    # the median of the repeats' ratios, not the ratio of the medians (400 / 800 = 0.5 here too,
    # but min and max come only from pairing each repeat with its own raw)
    assert (fast["median"], fast["min"], fast["max"]) == pytest.approx((0.5, 0.4, 0.6))
    assert summary["ratios"]["graph_x2_vs_raw"]["per_repeat"] == pytest.approx([0.2, 0.4, 0.25])  # 2 calls a row
    assert summary["ratios"]["graph_x2_vs_fast"]["per_repeat"] == pytest.approx([0.5, 2 / 3, 0.5])
    assert "fast_vs_tfx_bsl_beam" not in summary["ratios"]  # the baseline did not run
    assert summary["raw"]["examples_per_s"] == {"median": 800, "min": 500, "max": 1000, "n": 3}


def test_the_table_shows_the_median_with_its_range():
    assert run.with_range({"median": 0.44, "min": 0.41, "max": 0.47, "n": 3}, ".2f") == "0.44 (0.41-0.47)"
    assert run.with_range({"median": 0.44, "min": 0.44, "max": 0.44, "n": 1}, ".2f") == "0.44"
    c = workloads.WORKLOADS["C"]
    runs = {"raw": [a_run(20), a_run(10)], "fast": [a_run(19), a_run(8)]}
    results = {"date": "d", "repeats": 2, "machine": {"cpus": 2, "cpu": "x", "runner": "r", "beam": "b",
                                                     "tensorflow": "t", "tfx_bsl": "f"},
               "workloads": {"C": {"workload": c.description, "reference": "raw", "baseline": None,
                                   "modes": ["raw", "fast"], "summary": run.summarize(c, ("raw", "fast"), runs)}}}
    table = run.markdown(results)
    assert "| C: ResNet50 224x224, JPEG bytes in | fast | 100 | 14 (8-19) | 0.88 (0.80-0.95) | - |" in table
    assert "- C fast: 0.88 (0.80-0.95) of raw (target 0.95: not met)" in table


def test_a_count_other_than_the_input_fails_the_measurement():
    run.check_count("fast", "in/*", {"records": 10}, 10)
    with pytest.raises(RuntimeError, match="scored 9 records, not the 10"):
        run.check_count("fast", "in/*", {"records": 9}, 10)


def test_a_dense_data_is_parquet_with_a_fixed_size_float_column_and_string_keys(tmp_path):
    pattern = workloads.ensure_data(workloads.WORKLOADS["A-dense"], str(tmp_path), 3000)
    (path,) = glob.glob(pattern)
    table = pq.read_table(path)
    features = table.schema.field("features").type
    assert pa.types.is_fixed_size_list(features) and features.list_size == 32
    assert features.value_type == pa.float32() and table.schema.field("id").type == pa.string()
    assert table.num_rows == 3000 and len(set(table.column("id").to_pylist())) == 3000
    written = os.path.getmtime(path)
    assert workloads.ensure_data(workloads.WORKLOADS["A-dense"], str(tmp_path), 3000) == pattern
    assert os.path.getmtime(path) == written  # cached: not written again


def test_raw_arrays_scores_every_row_of_a_keras_export(tmp_path):
    import keras

    from bench.worker import measure_raw_arrays

    x = keras.Input(shape=(32,), name="features")
    model = keras.Model(x, {"y": keras.layers.Dense(2)(x)})
    model_dir = workloads.keras_export(model, str(tmp_path / "model"))
    values = [{"features": row} for row in np.ones((2500, 32), np.float32)]
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(workloads.parquet_table(values[:1500], [str(i) for i in range(1500)]), data / "a.parquet")
    pq.write_table(workloads.parquet_table(values[1500:], [str(i) for i in range(1000)]), data / "b.parquet")
    result = measure_raw_arrays(model_dir, str(data / "*.parquet"), batch_size=1024)
    assert result["records"] == 2500
    assert result["window"][0] <= result["window"][1]


def test_nvidia_smi_lines_are_read_as_percentages():
    assert [gpu_util.parse_percent(v) for v in ("87\n", " 3 %", "[N/A]", "", "140")] == [87.0, 3.0, None, None, None]
    samples = [(1.0, 10.0), (2.0, 50.0), (3.0, 90.0), (4.0, 0.0)]
    assert gpu_util.summarize(samples, 1.5, 3.5) == {"mean": 70.0, "max": 90.0, "samples": 2}
    assert gpu_util.summarize(samples, 5.0, 6.0) is None


def test_the_sampler_reads_a_real_process_and_survives_a_missing_one():
    printer = [sys.executable, "-c", "import time\nfor v in (20, 'x', 60):\n    print(v, flush=True)\ntime.sleep(30)"]
    with gpu_util.GpuUtilization(printer) as util:
        for _ in range(200):
            if len(util.samples) == 2:
                break
            time.sleep(0.02)
    assert util.summary() == {"mean": 40.0, "max": 60.0, "samples": 2} and util.problem is None
    with gpu_util.GpuUtilization(["no-such-nvidia-smi-here"]) as missing:
        pass
    assert missing.summary() is None and "cannot run" in missing.problem


def test_a_workers_peak_rss_is_its_own_not_its_launchers():
    ballast = bytearray(600 * 1024 * 1024)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touched: resident in this (the launcher's) process
    code = "from bench.worker import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    assert float(out) < 400, out  # numpy and the bench's modules, not the 600 MB above
    del ballast


def test_gpu_check_records_are_one_count_or_one_per_workload_above_the_start_up_probe():
    from bench import gpu_check

    chosen = run.parse_workloads("B,C")
    assert gpu_check.records_per_workload(None, chosen) == gpu_check.RECORDS
    assert gpu_check.records_per_workload("300", chosen) == {"B": 300, "C": 300}
    assert gpu_check.records_per_workload("B=1000", chosen) == {"B": 1000, "C": gpu_check.RECORDS["C"]}
    with pytest.raises(run.BenchError, match="model B needs at least 128"):
        gpu_check.records_per_workload("B=100,C=64", chosen)
    for bad in ("A=500", "B=many", "12x"):
        with pytest.raises(run.BenchError, match="--records"):
            gpu_check.records_per_workload(bad, chosen)


def test_gpu_check_exits_2_without_a_gpu_unless_allowed(tmp_path):
    from bench import gpu_check

    if gpu_check.gpu_names():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--work", str(tmp_path), "--out", str(tmp_path)]) == 2
