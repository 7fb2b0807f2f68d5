"""Raw inputs preprocessed inside the serving signature, passthrough features, classify/regress
signatures and TF Serving warmup requests (models.prepare), on real exports of tiny Keras models.

The references are built here, independently of models.preparation.preprocessing: images are encoded and
decoded in the test with tf.io.encode_*/decode_jpeg/decode_png (JPEG is lossy, so the reference
decodes the very bytes the export gets), resized with tf.image.resize and scaled by hand; token
ids are computed in plain Python from the vocabulary file. Every export is run through both
tf.saved_model.load and tfx-bsl's own handler (its TF1 session loader). No mocks.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from models.serving import examples as ex
from models.preparation import verify, warmup
from models.serving.feature_spec import SPEC_FILE, Feature, FeatureSpecError, spec_from_json, spec_to_json
from models.serving.prediction_log import outputs_from_log
from models.prepare import main, prepare_model
from models.serving.preprocess_spec import ImageInput, TextInput
from models.serving.tfx_bsl_call import TfxBslBatchCall, inference_spec
from tests.helpers import read_jsonl

RTOL = 1e-5
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far"]
LENGTH = 6


# --------------------------------------------------------------------------------------------
# tiny models and their exports
# --------------------------------------------------------------------------------------------

def image_model():
    import keras

    keras.utils.set_random_seed(21)
    pixels = keras.Input(shape=(8, 8, 3), name="pixels")
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(pixels)
    return keras.Model(pixels, {"probs": keras.layers.Dense(3, activation="softmax")(
        keras.layers.Flatten()(hidden))})


def text_model():
    import keras

    keras.utils.set_random_seed(22)
    tokens = keras.Input(shape=(LENGTH,), name="tokens", dtype="int32")
    embedded = keras.layers.Embedding(len(WORDS) + 2, 4)(tokens)
    flat = keras.layers.Flatten()(embedded)  # position-sensitive: padding and order matter
    return keras.Model(tokens, {"score": keras.layers.Dense(1)(flat)})


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    """Image model fed from encoded bytes, unit scale, with id and uri passed through."""
    model = image_model()
    base = str(tmp_path_factory.mktemp("image"))
    return prepare_model(model, base, image_inputs=["pixels=image"], image_scale="unit",
                         passthrough="id,uri"), model


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    """Text model fed from raw strings; the vocabulary file is deleted once exported."""
    vocab = tmp_path_factory.mktemp("own_vocab") / "words.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    model = text_model()
    version_dir = prepare_model(model, str(tmp_path_factory.mktemp("text")), text_inputs={"tokens": "text"},
                                vocab=str(vocab))
    os.remove(vocab)  # the export must carry its own copy
    return version_dir, model


@pytest.fixture(scope="module")
def classify_export(tmp_path_factory):
    model = image_model()
    base = str(tmp_path_factory.mktemp("classify"))
    return prepare_model(model, base, image_inputs={"pixels": "image"}, image_scale="symmetric",
                         method="classify", class_labels=["adelie", "chinstrap", "gentoo"]), model


@pytest.fixture(scope="module")
def regress_export(tmp_path_factory, vocab_file):
    model = text_model()
    return prepare_model(model, str(tmp_path_factory.mktemp("regress")), text_inputs=["tokens=text"],
                         vocab=vocab_file, method="regress"), model


def random_image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def record(**values):
    return ex.make_example(values).SerializeToString()


def run_both(version_dir, serialized):
    return {"tf.saved_model.load": verify.run_tf2(version_dir, serialized),
            "tfx-bsl": verify.run_tfx_bsl(version_dir, serialized)}


def image_reference(model, encoded, decode, scale):
    """The model on the decoded, resized (only when needed) and scaled pixels, built here."""
    batch = []
    for data in encoded:
        pixels = tf.cast(decode(data, channels=3), tf.float32)
        if pixels.shape[:2] != (8, 8):
            pixels = tf.image.resize(pixels, [8, 8])
        batch.append(pixels.numpy())
    pixels = np.stack(batch)
    pixels = pixels / 255.0 if scale == "unit" else pixels / 127.5 - 1.0
    return {k: np.asarray(v) for k, v in model(pixels.astype(np.float32), training=False).items()}


def token_ids(text):
    """Plain Python: lower-case, split on whitespace, pad 0, unknown 1, word on line i -> i + 2."""
    ids = [WORDS.index(w) + 2 if w in WORDS else 1 for w in text.lower().split()][:LENGTH]
    return ids + [0] * (LENGTH - len(ids))


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

def test_image_model_fed_jpeg_bytes_equals_it_fed_the_decoded_resized_scaled_tensor(image_export):
    version_dir, model = image_export
    images = [random_image((8, 8, 3), 1), random_image((13, 11, 3), 2), random_image((5, 6, 3), 3)]
    encoded = [tf.io.encode_jpeg(image, quality=90).numpy() for image in images]
    serialized = [record(image=data, id=f"j{i}") for i, data in enumerate(encoded)]
    expected = image_reference(model, encoded, tf.io.decode_jpeg, "unit")
    for label, outputs in run_both(version_dir, serialized).items():
        np.testing.assert_allclose(outputs["probs"], expected["probs"], rtol=RTOL, err_msg=label)


def test_image_model_fed_png_bytes_equals_it_fed_the_decoded_tensor(image_export):
    version_dir, model = image_export
    rgba = random_image((9, 8, 4), 5)  # alpha dropped: the model input has 3 channels
    encoded = [tf.io.encode_png(random_image((8, 8, 3), 4)).numpy(), tf.io.encode_png(rgba).numpy()]
    expected = image_reference(model, encoded, tf.io.decode_png, "unit")
    for label, outputs in run_both(version_dir, [record(image=data) for data in encoded]).items():
        np.testing.assert_allclose(outputs["probs"], expected["probs"], rtol=RTOL, err_msg=label)


def test_an_undecodable_image_fails_the_call(image_export):
    version_dir, _ = image_export
    good = tf.io.encode_jpeg(random_image((8, 8, 3), 6)).numpy()
    for bad in (b"not an image", good[: len(good) // 2]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            verify.run_tf2(version_dir, [record(image=good), record(image=bad)])


def test_image_feature_spec_describes_the_record_and_the_preprocessing(image_export):
    version_dir, _ = image_export
    with open(os.path.join(version_dir, SPEC_FILE)) as f:
        spec = spec_from_json(json.load(f))
    image, id_, uri = spec
    assert (image.name, image.dtype, image.shape, image.required) == ("image", "string", (), True)
    assert image.preprocess == ImageInput("pixels", 8, 8, 3, "unit", "float32")
    assert [(f.name, f.dtype, f.default, f.passthrough) for f in (id_, uri)] == [
        ("id", "string", "", True), ("uri", "string", "", True)]
    # golden examples are real images and valid records
    rows = ex.golden_values(spec, 4)
    for row in rows:
        ex.validate_example(ex.make_example(row, spec).SerializeToString(), spec)
        decoded = tf.io.decode_image(row["image"], channels=3, expand_animations=False)
        assert decoded.shape[-1] == 3
    assert {rows[0]["image"][:4], rows[1]["image"][:3]} == {b"\x89PNG", b"\xff\xd8\xff"}


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------

TEXTS = ["The cat sat", "the DOG ran  far on the mat today", "", "zebra   Cat\tmat", "on"]


def test_text_model_fed_raw_strings_equals_it_fed_token_ids(text_export):
    version_dir, model = text_export
    ids = np.asarray([token_ids(t) for t in TEXTS], np.int32)
    assert ids[1].tolist() == [2, 7, 8, 9, 5, 2]  # truncated to 6: "the dog ran far on the"
    assert ids[3].tolist() == [1, 3, 6, 0, 0, 0]  # unknown word, padding
    expected = np.asarray(model(ids, training=False)["score"])
    for label, outputs in run_both(version_dir, [record(text=t) for t in TEXTS]).items():
        np.testing.assert_allclose(outputs["score"], expected, rtol=RTOL, err_msg=label)


def test_text_export_ships_its_vocabulary_and_describes_the_ids(text_export):
    version_dir, _ = text_export
    with open(os.path.join(version_dir, "assets", "vocab_tokens.txt")) as f:
        assert f.read().split() == WORDS
    with open(os.path.join(version_dir, SPEC_FILE)) as f:
        (text,) = spec_from_json(json.load(f))
    assert (text.name, text.dtype, text.shape) == ("text", "string", ())
    assert text.preprocess == TextInput("tokens", LENGTH, "vocab_tokens.txt", len(WORDS), "int32")


def test_our_token_ids_are_keras_text_vectorization_ids():
    import keras

    layer = keras.layers.TextVectorization(standardize="lower", split="whitespace", vocabulary=WORDS,
                                           output_sequence_length=LENGTH)
    texts = [t for t in TEXTS if t]  # Keras pads an empty text to length 6 as well, as a [1, 6] row
    np.testing.assert_array_equal(np.asarray(layer(texts)), [token_ids(t) for t in texts])


def test_a_model_with_its_own_text_vectorization_needs_no_option(tmp_path):
    import keras

    keras.utils.set_random_seed(23)
    vectorize = keras.layers.TextVectorization(output_sequence_length=4, vocabulary=WORDS)
    text = keras.Input(shape=(1,), dtype="string", name="text")
    embedded = keras.layers.Embedding(len(WORDS) + 2, 3)(vectorize(text))
    model = keras.Model(text, {"y": keras.layers.Dense(2)(keras.layers.Flatten()(embedded))})
    version_dir = prepare_model(model, str(tmp_path / "tv"))  # verified through both loaders
    texts = ["The cat sat", "dog ran far on the mat", "unknown words only"]
    expected = np.asarray(model(tf.constant([[t] for t in texts]), training=False)["y"])
    assert len({tuple(row) for row in np.round(expected, 6)}) == 3  # the lookup table is in play
    for label, outputs in run_both(version_dir, [record(text=[t]) for t in texts]).items():
        np.testing.assert_allclose(outputs["y"], expected, rtol=RTOL, err_msg=label)


# --------------------------------------------------------------------------------------------
# passthrough
# --------------------------------------------------------------------------------------------

def test_passthrough_features_come_back_unchanged(image_export):
    version_dir, _ = image_export
    image = tf.io.encode_png(random_image((8, 8, 3), 7)).numpy()
    serialized = [record(image=image, id="a-1", uri="gs://b/a.png"), record(image=image, id="ü\xff"),
                  record(image=image)]
    for label, outputs in run_both(version_dir, serialized).items():
        assert outputs["id"].tolist() == [[b"a-1"], ["ü\xff".encode()], [b""]], label
        assert outputs["uri"].tolist() == [[b"gs://b/a.png"], [b""], [b""]], label


def test_declared_passthrough_feature_keeps_its_type(tmp_path):
    model = image_model()
    version_dir = prepare_model(model, str(tmp_path / "m"), image_inputs=["pixels=image"], image_scale="none",
                                feature_spec=(Feature("row", "int64", (), default=-1),), passthrough=["row"],
                                verify_count=3)
    image = tf.io.encode_png(random_image((8, 8, 3), 8)).numpy()
    outputs = verify.run_tfx_bsl(version_dir, [record(image=image, row=41), record(image=image)])
    assert outputs["row"].tolist() == [[41], [-1]]
    expected = image_reference_none(model, [image])
    np.testing.assert_allclose(outputs["probs"][0], expected[0], rtol=RTOL)


def image_reference_none(model, encoded):
    pixels = np.stack([tf.cast(tf.io.decode_png(d, channels=3), tf.float32).numpy() for d in encoded])
    return np.asarray(model(pixels, training=False)["probs"])


@pytest.mark.parametrize("kwargs,message", [
    ({"passthrough": "probs"}, "names of model outputs"),
    ({"passthrough": "pixels"}, "fed by feature 'image'"),
    ({"passthrough": "id", "method": "classify"}, "needs --method predict"),
    ({"image_scale": None}, "needs --image_scale"),
    ({"image_inputs": ["nope=image"]}, "not model inputs"),
    ({"text_inputs": ["pixels=text"], "image_inputs": None, "image_scale": None, "vocab": "x"}, "text input"),
    ({"image_inputs": None}, "--image_scale is given without --image_input"),
    ({"vocab": "x"}, "--vocab is given without --text_input"),
])
def test_bad_options_fail_before_anything_is_written(tmp_path, vocab_file, kwargs, message):
    options = {"image_inputs": ["pixels=image"], "image_scale": "unit", **kwargs}
    if options.get("vocab") == "x":
        options["vocab"] = vocab_file
    with pytest.raises(ValueError, match=message):
        prepare_model(image_model(), str(tmp_path / "m"), verify_count=2, **options)
    assert not (tmp_path / "m" / "1").exists()


# --------------------------------------------------------------------------------------------
# classify and regress signatures
# --------------------------------------------------------------------------------------------

def signature_def(version_dir, name="serving_default"):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model.meta_graphs[0].signature_def[name]


def tfx_bsl_logs(version_dir, serialized):
    from tfx_bsl.beam import run_inference as tfx_run_inference

    handler = tfx_run_inference.create_model_handler(inference_spec(version_dir, "serving_default"), None, None)
    return list(handler.run_inference(serialized, handler.load_model()))


def test_classify_signature_gives_classify_logs_with_the_models_scores(classify_export):
    version_dir, model = classify_export
    sig = signature_def(version_dir)
    assert sig.method_name == "tensorflow/serving/classify"
    assert list(sig.inputs) == ["inputs"] and sorted(sig.outputs) == ["classes", "scores"]
    encoded = [tf.io.encode_jpeg(random_image((10, 8, 3), s)).numpy() for s in (9, 10)]
    serialized = [record(image=data) for data in encoded]
    expected = image_reference(model, encoded, tf.io.decode_jpeg, "symmetric")["probs"]
    logs = tfx_bsl_logs(version_dir, serialized)
    assert [log.WhichOneof("log_type") for log in logs] == ["classify_log"] * 2
    for i, log in enumerate(logs):
        classes = log.classify_log.response.result.classifications[0].classes
        assert [c.label for c in classes] == ["adelie", "chinstrap", "gentoo"]
        np.testing.assert_allclose([c.score for c in classes], expected[i], rtol=RTOL)
    # the fast engine's call (tf.saved_model.load) gives the same outputs, by the same names
    fast = verify.run_tf2(version_dir, serialized)
    from_logs = [outputs_from_log(log) for log in logs]
    assert fast["classes"].tolist() == [[b"adelie", b"chinstrap", b"gentoo"]] * 2
    np.testing.assert_array_equal(fast["scores"], np.stack([o["scores"] for o in from_logs]))
    assert [o["classes"].tolist() for o in from_logs] == fast["classes"].tolist()


def test_regress_signature_gives_regress_logs_named_like_the_signature(regress_export):
    version_dir, model = regress_export
    sig = signature_def(version_dir)
    assert sig.method_name == "tensorflow/serving/regress"
    assert list(sig.inputs) == ["inputs"] and list(sig.outputs) == ["outputs"]
    serialized = [record(text=t) for t in TEXTS]
    expected = np.asarray(model(np.asarray([token_ids(t) for t in TEXTS], np.int32))["score"]).reshape(-1)
    logs = tfx_bsl_logs(version_dir, serialized)
    assert {log.WhichOneof("log_type") for log in logs} == {"regress_log"}
    np.testing.assert_allclose([log.regress_log.response.result.regressions[0].value for log in logs],
                               expected, rtol=RTOL)
    fast = verify.run_tf2(version_dir, serialized)
    np.testing.assert_array_equal(fast["outputs"], [outputs_from_log(log)["outputs"] for log in logs])
    np.testing.assert_array_equal(TfxBslBatchCall(version_dir)(serialized)["outputs"], fast["outputs"])


@pytest.mark.parametrize("method,labels,message", [
    ("classify", ["a", "b"], "2 class labels for 3 scores"),
    ("regress", None, "one number per example"),
    ("predict", ["a", "b", "c"], "class labels apply to --method classify"),
])
def test_outputs_that_do_not_fit_the_method_are_refused(tmp_path, method, labels, message):
    with pytest.raises(ValueError, match=message):
        prepare_model(image_model(), str(tmp_path / "m"), image_inputs=["pixels=image"], image_scale="unit",
                      method=method, class_labels=labels, verify_count=2)
    assert not (tmp_path / "m" / "1").exists()


# --------------------------------------------------------------------------------------------
# TF Serving warmup requests
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which,kind", [("image_export", "predict_log"), ("classify_export", "classify_log"),
                                        ("regress_export", "regress_log")])
def test_warmup_requests_parse_and_replay_through_the_signature(request, which, kind):
    version_dir, _ = request.getfixturevalue(which)
    logs = warmup.read_warmup(version_dir)
    assert len(logs) == 8 and {log.WhichOneof("log_type") for log in logs} == {kind}
    with open(os.path.join(version_dir, SPEC_FILE)) as f:
        spec = spec_from_json(json.load(f))
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    (input_name,) = fn.structured_input_signature[1]
    replayed = warmup.replay(version_dir)
    for log, outputs in zip(logs, replayed):
        signature, key, serialized = warmup.request_examples(log)
        assert (signature, key, len(serialized)) == ("serving_default", input_name, 1)
        ex.validate_example(serialized[0], spec)  # a real record of this model
        direct = {k: v.numpy() for k, v in fn(**{key: tf.constant(serialized)}).items()}
        assert sorted(outputs) == sorted(direct)
        for name in direct:
            np.testing.assert_array_equal(outputs[name], direct[name])
    model_name = os.path.basename(os.path.dirname(version_dir))
    assert getattr(logs[0], kind).request.model_spec.name == model_name


def test_inspect_reports_preprocessing_passthrough_warmup_and_the_contract(classify_export, image_export):
    from models.inspect import inspect_report

    report, ok = inspect_report(image_export[0])
    assert ok
    assert "image: encoded image (JPEG/PNG) -> pixels float32[8, 8, 3], scale unit (required)" in report
    assert "id: string[] (default='', passed through)" in report
    assert "TF Serving warmup: 8 requests (assets.extra/tf_serving_warmup_requests)" in report
    report, ok = inspect_report(classify_export[0])
    assert ok and "serving_default (tensorflow/serving/classify)" in report


def test_verification_notices_a_vocabulary_missing_from_the_export(text_export, tmp_path):
    import shutil

    version_dir, model = text_export
    copy = str(tmp_path / "copy")
    shutil.copytree(version_dir, copy)
    os.remove(os.path.join(copy, "assets", "vocab_tokens.txt"))
    with open(os.path.join(copy, SPEC_FILE)) as f:
        spec = spec_from_json(json.load(f))
    result = verify.verify_export(copy, spec, lambda dense: {"score": tf.zeros([len(dense["text"]), 1])})
    assert not result.ok and "vocab_tokens.txt" in result.problems[0]


def test_verification_compares_the_export_with_the_preprocessed_reference(image_export):
    """The reference preprocesses golden images; a reference that skips a step is caught."""
    version_dir, model = image_export
    with open(os.path.join(version_dir, SPEC_FILE)) as f:
        spec = spec_from_json(json.load(f))

    def reference(scale):
        def call(dense):
            pixels = np.stack([tf.image.resize(tf.cast(tf.io.decode_image(d, channels=3, expand_animations=False),
                                                       tf.float32), [8, 8]).numpy() for d in dense["image"]])
            outputs = {k: v for k, v in model(pixels * scale, training=False).items()}
            count = len(dense["image"])
            return {**outputs, "id": tf.reshape(dense["id"], [count, 1]), "uri": tf.reshape(dense["uri"], [count, 1])}
        return call

    assert verify.verify_export(version_dir, spec, reference(1 / 255.0)).ok
    wrong = verify.verify_export(version_dir, spec, reference(1.0))
    assert not wrong.ok and any("'probs' differs" in p for p in wrong.problems)


# --------------------------------------------------------------------------------------------
# spec JSON and the CLI
# --------------------------------------------------------------------------------------------

def test_spec_json_round_trips_preprocessing_and_passthrough_and_rejects_bad_entries():
    spec = (Feature("image", "string", (), preprocess=ImageInput("pixels", 4, 5, 1, "none", "uint8")),
            Feature("text", "string", (), default="", preprocess=TextInput("tokens", 3, "v.txt", 10)),
            Feature("id", "int64", (), default=0, passthrough=True))
    assert spec_from_json(json.loads(json.dumps(spec_to_json(spec)))) == spec
    bad = [
        {"name": "i", "dtype": "string", "preprocess": {"kind": "image", "input": "p", "height": 2,
                                                        "width": 2, "channels": 2, "scale": "unit"}},
        {"name": "i", "dtype": "float32", "preprocess": {"kind": "text", "input": "t", "length": 2,
                                                         "vocab": "v.txt", "vocab_size": 3}},
        {"name": "i", "dtype": "string", "preprocess": {"kind": "audio"}},
        {"name": "i", "dtype": "string", "preprocess": {"kind": "image", "input": "p", "height": 2,
                                                        "width": 2, "channels": 3, "scale": "unit",
                                                        "dtype": "uint8"}},
    ]
    for obj in bad:
        with pytest.raises(FeatureSpecError):
            spec_from_json([obj])


def test_cli_exports_raw_inputs_from_a_keras_file(tmp_path, vocab_file, capsys):
    import keras

    keras.utils.set_random_seed(24)
    pixels = keras.Input(shape=(8, 8, 1), name="pixels")
    tokens = keras.Input(shape=(LENGTH,), name="tokens", dtype="int64")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(pixels),
                                         keras.layers.Flatten()(keras.layers.Embedding(10, 2)(tokens))])
    model = keras.Model({"pixels": pixels, "tokens": tokens}, {"y": keras.layers.Dense(2)(joined)})
    path = str(tmp_path / "two.keras")
    model.save(path)
    out = str(tmp_path / "out")
    assert main(["--model", path, "--output", out, "--image_input", "pixels=photo", "--image_scale", "symmetric",
                 "--text_input", "tokens=caption", "--vocab", vocab_file, "--passthrough", "id"]) == 0
    printed = capsys.readouterr().out
    assert "photo: encoded image (JPEG/PNG) -> pixels float32[8, 8, 1], scale symmetric" in printed
    assert "caption: text -> tokens int64[6] via assets/vocab_tokens.txt" in printed
    gray = random_image((8, 8, 1), 11)
    outputs = verify.run_tfx_bsl(os.path.join(out, "1"), [record(photo=tf.io.encode_png(gray).numpy(),
                                                                 caption="dog on mat", id="r")])
    expected = model({"pixels": gray[None].astype(np.float32) / 127.5 - 1.0,
                      "tokens": np.asarray([token_ids("dog on mat")], np.int64)})["y"]
    np.testing.assert_allclose(outputs["y"], np.asarray(expected), rtol=RTOL)
    assert outputs["id"].tolist() == [[b"r"]]

    assert main(["--model", path, "--output", out, "--image_input", "pixels=photo"]) == 1
    assert "--image_scale" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# batch job: bad images are dead letters, passthrough features reach the rows
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["fast", "tfx-bsl"])
def test_bad_images_become_dead_letters_in_a_batch_job(image_export, write_tfrecords, tmp_path, engine):
    from pipelines import batch_infer

    version_dir, model = image_export
    encoded = [tf.io.encode_jpeg(random_image((8, 8, 3), 100 + i)).numpy() for i in range(10)]
    good = [record(image=data, id=f"g{i}", uri=f"u{i}") for i, data in enumerate(encoded)]
    bad = {"not-an-image": record(image=b"GIF? no, plain text", id="not-an-image"),
           "truncated": record(image=encoded[0][: len(encoded[0]) // 2], id="truncated")}
    path = write_tfrecords("images.tfrecord", good[:4] + [bad["not-an-image"]] + good[4:7]
                           + [bad["truncated"]] + good[7:])
    out = str(tmp_path / "pred")
    batch_infer.run(["--input", path, "--model", f"img={version_dir}", "--output", out, "--key_feature", "id",
                     "--engine", engine], save_main_session=False)
    rows = {r["key"]: r for r in read_jsonl(out + "-*.jsonl")}
    dead = read_jsonl(out + ".errors-*.jsonl")
    assert sorted(rows) == sorted(f"g{i}" for i in range(10))
    assert sorted((d["key"], d["stage"]) for d in dead) == [("not-an-image", "infer"), ("truncated", "infer")]
    expected = image_reference(model, encoded, tf.io.decode_jpeg, "unit")["probs"]
    for i in range(10):
        row = rows[f"g{i}"]["img"]
        np.testing.assert_allclose(row["probs"], expected[i], rtol=RTOL)
        assert (row["id"], row["uri"]) == ([f"g{i}"], [f"u{i}"])


@pytest.mark.parametrize("which", ["classify_export", "regress_export"])
def test_batch_job_rows_of_classify_and_regress_signatures_agree_across_engines(request, write_tfrecords,
                                                                                tmp_path, which):
    from pipelines import batch_infer

    version_dir, _ = request.getfixturevalue(which)
    if which == "classify_export":
        values = [tf.io.encode_png(random_image((8, 8, 3), 200 + i)).numpy() for i in range(6)]
        records = [record(image=v, id=f"k{i}") for i, v in enumerate(values)]
    else:
        records = [record(text=t, id=f"k{i}") for i, t in enumerate(TEXTS)]
    path = write_tfrecords("in.tfrecord", records)
    direct = verify.run_tf2(version_dir, records)
    rows = {}
    for engine in ("fast", "tfx-bsl"):
        out = str(tmp_path / engine / "pred")
        batch_infer.run(["--input", path, "--model", f"m={version_dir}", "--output", out, "--key_feature", "id",
                         "--engine", engine], save_main_session=False)
        rows[engine] = {r["key"]: r["m"] for r in read_jsonl(out + "-*.jsonl")}
        assert read_jsonl(out + ".errors-*.jsonl") == []
    # same names and values (up to float rounding: batches differ between the engines)
    for engine, by_key in rows.items():
        assert sorted(by_key) == [f"k{i}" for i in range(len(records))], engine
        for i in range(len(records)):
            got = by_key[f"k{i}"]
            assert sorted(got) == sorted(direct), engine
            if which == "classify_export":
                assert got["classes"] == ["adelie", "chinstrap", "gentoo"], engine
                np.testing.assert_allclose(got["scores"], direct["scores"][i], rtol=RTOL, err_msg=engine)
            else:
                np.testing.assert_allclose(got["outputs"], direct["outputs"][i], rtol=RTOL, err_msg=engine)


def test_vocabularies_that_could_never_match_are_refused(tmp_path):
    from models.preparation.preprocessing import read_vocab, vocab_paths

    for name, text, message in [("dup.txt", "a\nb\na\n", "repeats 'a'"), ("blank.txt", "a\n\nb\n", "line 2"),
                                ("space.txt", "a b\n", "whitespace"), ("empty.txt", "", "empty")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(FeatureSpecError, match=message):
            read_vocab(str(path))
    windows = tmp_path / "crlf.txt"
    windows.write_bytes(b"x\r\ny\r\n")
    assert read_vocab(str(windows)) == ["x", "y"]  # rewritten with \n before it becomes an asset
    assert vocab_paths("v.txt", ["a", "b"]) == {"a": "v.txt", "b": "v.txt"}
    assert vocab_paths(["a=va.txt", "b=vb.txt"], ["a", "b"]) == {"a": "va.txt", "b": "vb.txt"}
    assert vocab_paths(["shared.txt", "b=vb.txt"], ["a", "b"]) == {"a": "shared.txt", "b": "vb.txt"}
    with pytest.raises(FeatureSpecError, match="no vocabulary"):
        vocab_paths(["a=va.txt"], ["a", "b"])


def test_a_model_that_decodes_images_gets_small_batches_by_default_others_larger(image_export, text_export):
    from models.serving.model import load_serving_model
    from pipelines.inputs import default_batch_bytes
    from transforms.graph.model import parallel_graph
    from transforms.records.chunk import DECODED_IMAGE_CHUNK_BYTES, DEFAULT_CHUNK_BYTES

    image, text = (load_serving_model(d[0], name) for d, name in ((image_export, "image"), (text_export, "text")))
    assert default_batch_bytes(parallel_graph([image])) == DECODED_IMAGE_CHUNK_BYTES < DEFAULT_CHUNK_BYTES
    assert default_batch_bytes(parallel_graph([text])) == DEFAULT_CHUNK_BYTES
    assert default_batch_bytes(parallel_graph([text, image])) == DECODED_IMAGE_CHUNK_BYTES
