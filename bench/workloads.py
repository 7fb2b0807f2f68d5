"""The two benchmark workloads: models built through models.prepare, data written deterministically.

A: an MLP, one 32-float feature -> Dense 256 -> Dense 256 -> Dense 10 softmax (small model: the
   per-record overheads dominate);
B: a CNN over a 64x64x3 uint8 image stored as raw bytes -> 10 classes (heavy model: compute bound).
"""

import dataclasses
import os
from typing import Callable, List

import numpy as np

SHARD_RECORDS = 125_000
# every record carries a string key, and the jobs read it (--key_feature), as keyed jobs do
KEY_FEATURE = "id"


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build_model: Callable
    feature_spec: dict
    make_values: Callable[[np.random.Generator, int], List[dict]]


def build_mlp():
    import keras

    keras.utils.set_random_seed(1)
    x = keras.Input(shape=(32,), name="features")
    h = keras.layers.Dense(256, activation="relu")(x)
    h = keras.layers.Dense(256, activation="relu")(h)
    return keras.Model(x, {"probabilities": keras.layers.Dense(10, activation="softmax")(h)})


def build_cnn():
    import keras

    keras.utils.set_random_seed(2)
    image = keras.Input(shape=(64, 64, 3), name="image", dtype="uint8")
    h = keras.layers.Rescaling(1 / 255.0)(image)
    for filters in (32, 64, 128):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(image, {"probabilities": keras.layers.Dense(10, activation="softmax")(h)})


def mlp_values(rng, n):
    block = rng.normal(size=(n, 32)).astype(np.float32)
    return [{"features": row} for row in block]


def cnn_values(rng, n):
    return [{"image": rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)} for _ in range(n)]


WORKLOADS = {
    "A": Workload("A", "MLP 32 -> 256 -> 256 -> 10", build_mlp, {}, mlp_values),
    "B": Workload("B", "CNN 64x64x3 uint8 (raw bytes) -> 10", build_cnn,
                  {"image": {"dtype": "uint8", "shape": [64, 64, 3], "encoding": "raw"}}, cnn_values),
}


def ensure_model(workload: Workload, root: str) -> str:
    from models.serving import layout
    from models.serving.feature_spec import spec_from_json
    from models.prepare import prepare_model

    base = os.path.join(root, "models", workload.name)
    if not layout.list_versions(base):
        spec = spec_from_json(workload.feature_spec) if workload.feature_spec else None
        prepare_model(workload.build_model(), base, feature_spec=spec)
    return layout.resolve_version_dir(base)


def ensure_data(workload: Workload, root: str, records: int, tag: str = "") -> str:
    """Shards of SHARD_RECORDS records under root/data/<name><tag>-<records>/; returns the glob."""
    from models.serving.examples import make_example
    from models.serving.feature_spec import spec_from_json
    from transforms.sources.framing import encode_record

    spec = spec_from_json(workload.feature_spec) if workload.feature_spec else None
    directory = os.path.join(root, "data", f"{workload.name}{tag}-{records}-keyed")
    done = os.path.join(directory, "_SUCCESS")
    if not os.path.exists(done):
        os.makedirs(directory, exist_ok=True)
        rng = np.random.default_rng(records)
        shards = max(1, -(-records // SHARD_RECORDS))
        for shard in range(shards):
            count = min(SHARD_RECORDS, records - shard * SHARD_RECORDS)
            path = os.path.join(directory, f"part-{shard:05d}-of-{shards:05d}.tfrecord")
            with open(path, "wb") as f:
                for start in range(0, count, 10_000):
                    values = workload.make_values(rng, min(10_000, count - start))
                    f.write(b"".join(encode_record(make_example(dict(v, **{KEY_FEATURE: f"{shard}-{start + i}"}),
                                                                spec).SerializeToString())
                                     for i, v in enumerate(values)))
        open(done, "w").close()
    return os.path.join(directory, "part-*.tfrecord")
