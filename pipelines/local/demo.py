"""The embedded demo: a small classifier exported through models.prepare, and demo TFRecords.

Built once into .demo/ (or $TFINFER_DEMO_DIR) and reused. Five of the records are bad on purpose
(garbage bytes, a missing feature, a wrong dtype, a wrong length, an island the model's embedding
rejects) and the last file ends in a truncated record, so a demo run shows dead letters as well as predictions.
"""

import os
from typing import List

DEMO_RECORDS_PER_FILE = 2500
DEMO_FILES = ("demo-00000-of-00002.tfrecord", "demo-00001-of-00002.tfrecord.gz")


def demo_dir() -> str:
    return os.path.abspath(os.environ.get("TFINFER_DEMO_DIR", ".demo"))


def build_demo_model():
    """A 2-input Keras classifier: measurements float[4] and island int64 -> 3 species."""
    import keras

    keras.utils.set_random_seed(7)
    measurements = keras.Input(shape=(4,), name="measurements", dtype="float32")
    island = keras.Input(shape=(), name="island", dtype="int64")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(3, 4)(keras.ops.expand_dims(island, -1)))
    hidden = keras.layers.Dense(16, activation="relu")(
        keras.layers.Concatenate()([keras.layers.Normalization(
        mean=[44.0, 17.0, 200.0, 4200.0], variance=[25.0, 4.0, 196.0, 640000.0])(measurements),
                                    embedded]))
    probabilities = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    species = keras.layers.Lambda(lambda p: keras.ops.argmax(p, axis=-1), name="species")(probabilities)
    return keras.Model({"measurements": measurements, "island": island},
                       {"probabilities": probabilities, "species": species})


def demo_record_values(file_index: int, count: int):
    import numpy as np

    rng = np.random.default_rng(file_index)
    for i in range(count):
        yield {"id": f"penguin-{file_index}-{i:05d}",
               "measurements": rng.normal([44.0, 17.0, 200.0, 4200.0], [5.0, 2.0, 14.0, 800.0]).tolist(),
               "island": int(rng.integers(0, 3))}


def write_demo_data(data_dir: str) -> List[str]:
    import gzip

    from models.serving.examples import make_example
    from transforms.sources.framing import encode_record

    os.makedirs(data_dir, exist_ok=True)
    paths = []
    for index, name in enumerate(DEMO_FILES):
        records = [make_example(v).SerializeToString()
                   for v in demo_record_values(index, DEMO_RECORDS_PER_FILE)]
        if index == 0:
            records[10] = b"\x0a\xff\xff not a tf.Example"
            records[20] = make_example({"id": "penguin-bad-missing", "island": 1}).SerializeToString()
            records[30] = make_example({"id": "penguin-bad-dtype", "measurements": ["a", "b", "c", "d"],
                                        "island": 0}).SerializeToString()
            records[40] = make_example({"id": "penguin-bad-length", "measurements": [1.0, 2.0],
                                        "island": 0}).SerializeToString()
            # valid to the spec, but the embedding has 3 islands: the model itself fails on it
            records[50] = make_example({"id": "penguin-bad-island", "measurements": [40.0, 17.0, 190.0, 4000.0],
                                        "island": 7}).SerializeToString()
        body = b"".join(encode_record(r) for r in records)
        if index == len(DEMO_FILES) - 1:
            body += encode_record(records[0])[:-7]  # a truncated tail, as after an interrupted copy
        path = os.path.join(data_dir, name)
        tmp = path + ".tmp"
        with (gzip.open(tmp, "wb") if name.endswith(".gz") else open(tmp, "wb")) as f:
            f.write(body)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def ensure_demo() -> dict:
    from models.serving import layout

    root = demo_dir()
    model_base = os.path.join(root, "models", "penguins")
    data_dir = os.path.join(root, "data")
    if not layout.list_versions(model_base):
        from models.prepare import prepare_model

        print(f"building the demo model in {model_base} (once)")
        prepare_model(build_demo_model(), model_base)
    if not all(os.path.exists(os.path.join(data_dir, n)) for n in DEMO_FILES):
        write_demo_data(data_dir)
    return {"model": model_base, "input": os.path.join(data_dir, "demo-*"),
            "output": os.path.join(root, "output", "predictions")}


def demo_args() -> List[str]:
    paths = ensure_demo()
    return ["--input", paths["input"], "--model", f"penguins={paths['model']}",
            "--output", paths["output"], "--key_feature", "id"]
