"""JSON Lines and CSV inputs end to end, --with_source, the run manifest and the TFRecord converter,
on the DirectRunner with a real model exported by models.prepare."""

import base64
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from models.serving.examples import make_example
from models.serving.fingerprint import saved_model_fingerprint
from models.inspect import inspect_report
from pipelines import batch_infer
from pipelines import to_tfrecord
from pipelines.manifest import read_manifest
from pipelines.options import OptionsError
from tests.helpers import read_jsonl
from tests.test_batch_infer import expected_outputs, penguin_values


def run_job(*args):
    return batch_infer.run(list(args), save_main_session=False)[1]


def write_jsonl(path, instances, extra_lines=()):
    with open(path, "w") as f:
        for instance in instances:
            f.write(json.dumps(instance) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(path)


def write_csv(path, instances, extra_lines=()):
    with open(path, "w") as f:
        f.write("id,measurements,island\n")
        for v in instances:
            f.write(f'{v["id"]},"{json.dumps(v["measurements"])}",{v["island"]}\n')
        for line in extra_lines:
            f.write(line + "\n")
    return str(path)


def rows_by_key(prefix):
    return {r["key"]: r for r in read_jsonl(prefix + "-*.jsonl")}


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_jsonl_and_csv_give_the_predictions_of_the_same_records_in_tfrecord(
        penguin_model, write_tfrecords, tmp_path, engine):
    version_dir, keras_model = penguin_model
    values = penguin_values(120, seed=3)
    tfrecord = write_tfrecords("p.tfrecord", [make_example(v).SerializeToString() for v in values])
    inputs = {"tfrecord": tfrecord, "jsonl": write_jsonl(tmp_path / "p.jsonl", values),
              "csv": write_csv(tmp_path / "p.csv", values)}
    results = {}
    for fmt, path in inputs.items():
        out = str(tmp_path / fmt / "pred")
        counters = run_job("--input", path, "--model", version_dir, "--output", out,
                           "--key_feature", "id", "--engine", engine)
        assert counters["records_read"] == 120 and counters["predictions_written"] == 120
        results[fmt] = rows_by_key(out)
    expected = expected_outputs(keras_model, values)
    for i, v in enumerate(values):
        for fmt in inputs:
            row = results[fmt][v["id"]]
            assert set(row) == {"key", "model"}
            np.testing.assert_allclose(row["model"]["probabilities"], expected["probabilities"][i], rtol=1e-6)
            assert row["model"]["species"] == int(expected["species"][i])


def test_malformed_lines_are_dead_letters_with_their_line_numbers(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    good = penguin_values(10, seed=4)
    jsonl = write_jsonl(tmp_path / "in.jsonl", good, extra_lines=[
        "{not json", '["a list"]', json.dumps({"id": "short", "measurements": [1, 2], "island": 1}),
        json.dumps({"measurements": [1, 2, 3, 4], "island": 1}),  # no key
        "", json.dumps({"id": "strisland", "measurements": [1, 2, 3, 4], "island": "one"})])
    out = str(tmp_path / "out" / "pred")
    counters = run_job("--input", jsonl, "--model", version_dir, "--output", out, "--key_feature", "id")
    dead = {str(d["source"]["line"]): d for d in read_jsonl(out + ".errors-*.jsonl")}
    assert {d["source"]["file"] for d in dead.values()} == {str(jsonl)}
    assert set(dead) == {"11", "12", "13", "14", "16"}  # line 15 is blank: not an instance
    assert [dead[n]["stage"] for n in ("11", "12", "13", "14", "16")] == [
        "decode", "decode", "convert", "convert", "convert"]
    assert dead["13"]["key"] == "short" and "line 13: 'measurements': has 2 values" in dead["13"]["error"]
    assert "key field 'id' is missing" in dead["14"]["error"] and dead["14"]["key"] == "in.jsonl:14"
    assert base64.b64decode(dead["11"]["input_base64"]) == b"{not json"
    rows = read_jsonl(out + "-*.jsonl")
    assert sorted(r["key"] for r in rows) == sorted(v["id"] for v in good)
    # conservation: every non-blank line is one prediction or one dead letter
    assert counters["records_read"] == 15 == len(rows) + len(dead)

    csv = write_csv(tmp_path / "in.csv", good[:3], extra_lines=["x1,\"[1,2,3,4]\",notint", "x2,1"])
    out = str(tmp_path / "csvout" / "pred")
    counters = run_job("--input", csv, "--model", version_dir, "--output", out, "--key_feature", "id")
    dead = read_jsonl(out + ".errors-*.jsonl")
    assert sorted((d["key"], d["stage"], d["source"]) for d in dead) == [
        ("in.csv:6", "decode", {"file": str(csv), "line": 6}), ("x1", "convert", {"file": str(csv), "line": 5})]
    assert counters["records_read"] == 5 == len(read_jsonl(out + "-*.jsonl")) + len(dead)


def test_keys_default_to_file_and_line_and_the_key_field_leaves_the_features(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    values = [dict(v, note=f"n{i}") for i, v in enumerate(penguin_values(3, seed=5))]
    path = write_jsonl(tmp_path / "k.jsonl", values)
    out = str(tmp_path / "a" / "pred")
    run_job("--input", path, "--model", version_dir, "--output", out, "--passthrough", "id,note")
    rows = rows_by_key(out)
    assert set(rows) == {"k.jsonl:1", "k.jsonl:2", "k.jsonl:3"}
    assert rows["k.jsonl:2"]["inputs"] == {"id": values[1]["id"], "note": "n1"}
    out = str(tmp_path / "b" / "pred")
    run_job("--input", path, "--model", version_dir, "--output", out, "--passthrough", "id,note",
            "--key_feature", "id")
    assert rows_by_key(out)[values[0]["id"]]["inputs"] == {"id": None, "note": "n0"}


def test_included_and_excluded_fields_pick_what_the_examples_hold(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    values = [dict(v, note="kept?") for v in penguin_values(4, seed=6)]
    path = write_jsonl(tmp_path / "f.jsonl", values)
    for flag, fields, note in (("--included_fields", "measurements,island", None),
                               ("--excluded_fields", "note", None),
                               ("--excluded_fields", "id", "kept?")):
        out = str(tmp_path / flag.strip("-") / fields / "pred")
        run_job("--input", path, "--model", version_dir, "--output", out, "--passthrough", "note",
                flag, fields)
        rows = read_jsonl(out + "-*.jsonl")
        assert len(rows) == 4 and {r["inputs"]["note"] for r in rows} == {note}
    out = str(tmp_path / "dropped" / "pred")
    run_job("--input", path, "--model", version_dir, "--output", out, "--excluded_fields", "island",
            "--max_dead_letter_fraction", "1")  # every record a dead letter, on purpose
    dead = read_jsonl(out + ".errors-*.jsonl")
    assert len(dead) == 4 and all("'island': required and missing" in d["error"] for d in dead)
    with pytest.raises(OptionsError, match="not both"):
        run_job("--input", path, "--model", version_dir, "--output", out,
                "--included_fields", "a", "--excluded_fields", "b")


def test_with_source_names_the_file_and_record_or_line(penguin_model, write_tfrecords, tmp_path):
    version_dir, _ = penguin_model
    values = penguin_values(5, seed=7)
    tfrecord = write_tfrecords("s.tfrecord", [make_example(v).SerializeToString() for v in values])
    jsonl = write_jsonl(tmp_path / "s.jsonl", values)
    for path, position in ((tfrecord, "record"), (jsonl, "line")):
        out = str(tmp_path / position / "pred")
        run_job("--input", path, "--model", version_dir, "--output", out, "--key_feature", "id",
                "--with_source")
        rows = rows_by_key(out)
        for i, v in enumerate(values):
            assert rows[v["id"]]["source"] == {"file": path, position: i if position == "record" else i + 1}


def test_mixed_formats_need_input_format(penguin_model, write_tfrecords, tmp_path):
    version_dir, _ = penguin_model
    values = penguin_values(2)
    tfrecord = write_tfrecords("m.tfrecord", [make_example(v).SerializeToString() for v in values])
    jsonl = write_jsonl(tmp_path / "m.jsonl", values)
    with pytest.raises(OptionsError, match="the inputs mix formats"):
        run_job("--input", tfrecord, "--input", jsonl, "--model", version_dir, "--output", str(tmp_path / "o"))
    renamed = tmp_path / "instances.txt"
    os.rename(jsonl, renamed)
    out = str(tmp_path / "txt" / "pred")
    run_job("--input", str(renamed), "--input_format", "jsonl", "--model", version_dir, "--output", out)
    assert len(read_jsonl(out + "-*.jsonl")) == 2


def test_the_manifest_traces_results_to_inputs_and_models(penguin_model, tmp_path):
    version_dir, _ = penguin_model
    values = penguin_values(6, seed=8)
    path = write_jsonl(tmp_path / "in.jsonl", values, extra_lines=["{bad"])
    out = str(tmp_path / "out" / "pred")
    run_job("--input", str(tmp_path / "*.jsonl"), "--model", f"clf={version_dir}", "--output", out,
            "--key_feature", "id", "--labels=api_key=sekrit-value", "--labels=team=ml")
    text = open(out + ".manifest.json").read()
    manifest = read_manifest(out + ".manifest.json")
    assert manifest["status"] == "succeeded" and manifest["started_at"] <= manifest["ended_at"]
    assert manifest["inputs"]["patterns"] == [{"pattern": str(tmp_path / "*.jsonl"), "files": [
        {"path": path, "size_bytes": os.path.getsize(path)}]}]
    (model,) = manifest["models"]
    assert model["name"] == "clf" and model["path"] == version_dir and model["version"] == 1
    files = [os.path.join(d, f) for d, _, fs in os.walk(version_dir) for f in fs]
    assert model["fingerprint"]["files"] == len(files)
    assert model["fingerprint"]["bytes"] == sum(os.path.getsize(f) for f in files)
    assert model["fingerprint"]["sha256"] in inspect_report(version_dir)[0]
    counts = manifest["counts"]
    predictions, dead = read_jsonl(out + "-*.jsonl"), read_jsonl(out + ".errors-*.jsonl")
    assert counts["predictions"] == len(predictions) == 6
    assert counts["dead_letters_by_stage"] == {"decode": 1} and counts["dead_letters"] == len(dead)
    assert counts["records_in"] == 7
    assert manifest["versions"]["apache-beam"] == "2.77.0" and manifest["versions"]["tensorflow"] == "2.21.0"
    assert manifest["options"]["key_feature"] == "id"
    assert "sekrit" not in text and manifest["options"]["labels"] == ["api_key=<redacted>", "team=ml"]


def test_a_fingerprint_changes_with_any_file(penguin_model, tmp_path):
    import shutil

    version_dir, _ = penguin_model
    copy = str(tmp_path / "copy")
    shutil.copytree(version_dir, copy)
    assert saved_model_fingerprint(copy) == saved_model_fingerprint(version_dir)
    with open(os.path.join(copy, "assets.extra", "extra.txt"), "w") as f:
        f.write("x")
    assert saved_model_fingerprint(copy)["sha256"] != saved_model_fingerprint(version_dir)["sha256"]


def read_tfrecord_examples(pattern):
    records = []
    for path in sorted(glob.glob(pattern)):
        compression = "GZIP" if path.endswith(".gz") else ""
        records += [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=compression)]
    return [tf.train.Example.FromString(r) for r in records]


def test_the_converter_round_trips_csv_to_tfrecord_and_scores_the_same(penguin_model, tmp_path):
    version_dir, keras_model = penguin_model
    values = penguin_values(20, seed=9)
    for i, v in enumerate(values):
        v["image"] = f"img{i}.png"
        pixels = np.full((2, 3, 3), i * 10, np.uint8)
        with open(tmp_path / v["image"], "wb") as f:
            f.write(tf.io.encode_png(pixels).numpy())
    csv = tmp_path / "rows.csv"
    with open(csv, "w") as f:
        f.write("id,measurements,island,image\n")
        for v in values:
            f.write(f'{v["id"]},"{json.dumps(v["measurements"])}",{v["island"]},{v["image"]}\n')
        f.write('bad,"[1,2,3,4]",1,missing.png\n')
        f.write('worse,"[1,2]",1,img0.png\n')
    prefix = str(tmp_path / "tfr" / "examples")
    counters = to_tfrecord.run(["--input", str(csv), "--output", prefix, "--model", version_dir,
                                "--image_columns", "image", "--gzip"], save_main_session=False)
    assert counters["records_read"] == 22 and counters["examples_written"] == 20
    dead = read_jsonl(prefix + ".errors-*.jsonl")
    assert sorted((d["key"], d["source"]["line"]) for d in dead) == [("rows.csv:22", 22), ("rows.csv:23", 23)]
    assert "cannot read" in next(d for d in dead if d["key"] == "rows.csv:22")["error"]
    examples = {e.features.feature["id"].bytes_list.value[0].decode(): e
                for e in read_tfrecord_examples(prefix + "-*.tfrecord.gz")}
    assert set(examples) == {v["id"] for v in values}
    for i, v in enumerate(values):
        feature = examples[v["id"]].features.feature
        np.testing.assert_allclose(feature["measurements"].float_list.value, v["measurements"], rtol=1e-6)
        assert feature["island"].int64_list.value == [v["island"]]
        assert np.all(tf.io.decode_png(feature["image"].bytes_list.value[0]).numpy() == i * 10)
    out = str(tmp_path / "scored" / "pred")
    run_job("--input", prefix + "-*.tfrecord.gz", "--model", version_dir, "--output", out, "--key_feature", "id")
    rows = rows_by_key(out)
    expected = expected_outputs(keras_model, values)
    for i, v in enumerate(values):
        np.testing.assert_allclose(rows[v["id"]]["model"]["probabilities"], expected["probabilities"][i],
                                   rtol=1e-6)


def test_the_converter_takes_a_feature_spec_file_and_refuses_tfrecord_inputs(tmp_path, write_tfrecords):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"features": [{"name": "x", "dtype": "float32", "shape": [2]}]}))
    path = write_jsonl(tmp_path / "x.jsonl", [{"x": [1, 2], "tag": "a"}, {"x": [3]}])
    prefix = str(tmp_path / "o" / "ex")
    to_tfrecord.run(["--input", path, "--output", prefix, "--feature_spec", str(spec)], save_main_session=False)
    (example,) = read_tfrecord_examples(prefix + "-*.tfrecord")
    assert list(example.features.feature["x"].float_list.value) == [1.0, 2.0]
    assert example.features.feature["tag"].bytes_list.value == [b"a"]
    assert len(read_jsonl(prefix + ".errors-*.jsonl")) == 1
    tfrecord = write_tfrecords("t.tfrecord", [b"x"])
    with pytest.raises(OptionsError, match="reads JSON Lines or CSV"):
        to_tfrecord.run(["--input", tfrecord, "--output", prefix, "--feature_spec", str(spec)])
    assert to_tfrecord.main(["--input", path, "--output", prefix]) == 2


def test_csv_json_list_cells_score_like_the_same_records_in_json_lines_and_tfrecord(tmp_path, write_tfrecords):
    """A VarLen int64 feature written as the README writes a multi-valued CSV cell ("[4, 1, 7, 0]")."""
    from models.serving.feature_spec import Feature
    from tests.support.foreign_models import estimator_varlen_export, expected_varlen

    model_dir = estimator_varlen_export(str(tmp_path / "estimator"))
    values = [{"id": f"r{i}", "tokens": list(range(i % 5)) + [4, 1, 7, 0][:i % 3], "weight": [0.5 + i]}
              for i in range(12)]
    spec = (Feature("tokens", "int64", varlen=True), Feature("weight", "float32", (1,)))
    tfrecord = write_tfrecords("v.tfrecord", [make_example(v, spec).SerializeToString() for v in values])
    with open(tmp_path / "v.csv", "w") as f:
        f.write("id,tokens,weight\n" + "".join(
            f'{v["id"]},"{json.dumps(v["tokens"])}","{json.dumps(v["weight"])}"\n' for v in values))
    inputs = {"tfrecord": tfrecord, "jsonl": write_jsonl(tmp_path / "v.jsonl", values), "csv": str(tmp_path / "v.csv")}
    expected = expected_varlen(values)
    for fmt, path in inputs.items():
        out = str(tmp_path / fmt / "pred")
        counters = run_job("--input", path, "--model", model_dir, "--output", out, "--key_feature", "id")
        assert counters["predictions_written"] == 12 and read_jsonl(out + ".errors-*.jsonl") == [], fmt
        rows = rows_by_key(out)
        np.testing.assert_allclose([rows[v["id"]]["model"]["score"] for v in values], expected, rtol=1e-6)


def logged_example(log):
    """The tf.Example a PredictionLog echoes (predict: the string input; classify/regress: its example list)."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        (tensor,) = log.predict_log.request.inputs.values()
        return tf.train.Example.FromString(tensor.string_val[0])
    (example,) = getattr(log, kind).request.input.example_list.examples
    return example


def log_values(log):
    """The log's one number: predict score, classify positive-class score, regress value."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        return tf.make_ndarray(log.predict_log.response.outputs["score"]).reshape(-1)[0]
    if kind == "classify_log":
        return log.classify_log.response.result.classifications[0].classes[1].score
    return log.regress_log.response.result.regressions[0].value


@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_prediction_logs_and_output_examples_of_json_and_csv_carry_their_keys(tmp_path, engine):
    """--key_feature with JSON Lines / CSV in and PredictionLogs or examples out: each joins back to its key."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tests.support.foreign_models import expected_linear, tf1_linear_export

    model_dir = tf1_linear_export(str(tmp_path / "linear"))
    values = [{"id": f"k{i}", "x": [0.5 * i, 1.0 - i]} for i in range(9)]
    by_key = dict(zip([v["id"] for v in values], range(len(values))))
    expected = expected_linear([v["x"] for v in values])
    jsonl = write_jsonl(tmp_path / "in.jsonl", values)
    csv = tmp_path / "in.csv"
    csv.write_text("id,x\n" + "".join(f'{v["id"]},"{json.dumps(v["x"])}"\n' for v in values))
    runs = [(jsonl, "serving_default", "score"), (jsonl, "classify", "scores"), (jsonl, "regress", "outputs"),
            (str(csv), "classify", "scores")]
    for n, (path, signature, column) in enumerate(runs):
        out = str(tmp_path / f"logs{n}" / "pred")
        assert batch_infer.main(["--input", path, "--model", model_dir, "--signature", signature, "--engine", engine,
                                 "--key_feature", "id", "--output_format", "tfrecord", "--output", out]) == 0
        logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
                for shard in sorted(glob.glob(out + "-*.tfrecord")) for r in tf.data.TFRecordDataset(shard)]
        keys = [logged_example(log).features.feature["id"].bytes_list.value[0].decode() for log in logs]
        assert sorted(keys) == sorted(by_key), (path, signature)
        for key, log in zip(keys, logs):  # each log's numbers belong to the record of its key
            want = expected[column][by_key[key]]
            np.testing.assert_allclose(log_values(log), np.ravel(want)[-1], rtol=1e-5)
    for path in (jsonl, str(csv)):
        out = str(tmp_path / ("examples_" + os.path.basename(path)) / "pred")
        assert batch_infer.main(["--input", path, "--model", model_dir, "--engine", engine, "--key_feature", "id",
                                 "--output_format", "examples", "--output", out]) == 0
        examples = read_tfrecord_examples(out + "-*.tfrecord")
        found = {e.features.feature["id"].bytes_list.value[0].decode(): e for e in examples}
        assert set(found) == set(by_key) and len(examples) == len(values)
        for key, example in found.items():
            np.testing.assert_allclose(example.features.feature["score"].float_list.value,
                                       [expected["score"][by_key[key]]], rtol=1e-5)


def test_a_file_whose_suffix_names_no_format_is_read_by_its_first_bytes(penguin_model, write_tfrecords, tmp_path,
                                                                        capsys):
    version_dir, _ = penguin_model
    values = penguin_values(30, seed=11)
    jsonl_txt = write_jsonl(tmp_path / "data.txt", values)
    csv_txt = write_csv(tmp_path / "rows.txt", values)
    shard = write_tfrecords("data-00000-of-00001", [make_example(v).SerializeToString() for v in values])
    for n, path in enumerate((jsonl_txt, csv_txt, shard)):
        out = str(tmp_path / f"out{n}" / "pred")
        assert batch_infer.main(["--input", path, "--model", version_dir, "--output", out, "--key_feature", "id"]) == 0
        assert set(rows_by_key(out)) == {v["id"] for v in values}, path
        assert read_jsonl(out + ".errors-*.jsonl") == []
    notes = tmp_path / "notes.txt"
    notes.write_text("penguins measured in 2007\nby island\n")
    assert batch_infer.main(["--input", str(notes), "--model", version_dir, "--output", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert str(notes) in err and "text that is neither JSON Lines nor CSV" in err and "--input_format" in err


@pytest.mark.parametrize("name, given, looks, flag", [
    ("data.txt", "tfrecord", "JSON Lines", "--input_format jsonl"),
    ("data.txt", "csv", "JSON Lines", "--input_format jsonl"),
    ("shard", "jsonl", "TFRecord", "--input_format tfrecord"),
    ("rows.txt", "tfrecord", "CSV", "--input_format csv"),
])
def test_an_input_format_the_first_bytes_contradict_is_refused_at_launch(penguin_model, write_tfrecords, tmp_path,
                                                                         capsys, name, given, looks, flag):
    version_dir, _ = penguin_model
    values = penguin_values(5, seed=12)
    path = {"data.txt": lambda: write_jsonl(tmp_path / name, values),
            "rows.txt": lambda: write_csv(tmp_path / name, values),
            "shard": lambda: write_tfrecords(name, [make_example(v).SerializeToString() for v in values])}[name]()
    args = ["--input", path, "--model", version_dir, "--output", str(tmp_path / "o"), "--input_format", given]
    assert batch_infer.main(args) == 2
    err = capsys.readouterr().err
    assert f"{path} is read as {given}, but it looks like {looks}" in err and f"pass {flag}" in err
    assert not glob.glob(str(tmp_path / "o-*"))  # refused before the job started


@pytest.mark.parametrize("writer", [write_jsonl, write_csv])
def test_a_misspelt_key_field_is_refused_with_the_closest_field(penguin_model, tmp_path, capsys, writer):
    version_dir, _ = penguin_model
    path = writer(tmp_path / ("in.jsonl" if writer is write_jsonl else "in.csv"), penguin_values(25, seed=13))
    assert batch_infer.main(["--input", path, "--model", version_dir, "--output", str(tmp_path / "o"),
                             "--key_feature", "idd"]) == 2
    err = capsys.readouterr().err
    assert "key field 'idd' is missing (the records hold ['id', 'island', 'measurements'])" in err
    assert "did you mean --key_feature id?" in err
