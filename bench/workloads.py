"""The benchmark workloads: models with random weights, data written deterministically.

A: an MLP, one 32-float feature -> Dense 256 -> Dense 256 -> Dense 10 softmax (small model: the
   per-record overheads dominate), exported through models.prepare; TFRecords of tf.Examples;
A-dense: the same MLP exported by Keras `model.export()` (one dense input, float32[None, 32], no
   tf.Example anywhere in the model) scored from Parquet files (a fixed-size-list<float32, 32>
   column "features" and a string column "id"): columns in, columns out;
B: a CNN over a 64x64x3 uint8 image stored as raw bytes -> 10 classes (heavy model: compute bound);
C: ResNet50 (keras.applications, weights=None: random, nothing downloaded) behind a JPEG-bytes
   serving signature (models.prepare's image input: the JPEG decoded and resized to 224x224 in
   the signature); TFRecords of tf.Examples with an "image" of JPEG bytes.

Each workload lists the modes it runs (bench.worker measures each); the first is its reference,
raw TF, which runs first in every repeat and every ratio of that repeat is against.
"""

import dataclasses
import os
import shutil
from typing import Callable, List, Optional, Tuple

import numpy as np

SHARD_RECORDS = 125_000
PARQUET_FILE_ROWS = 250_000  # 1M rows are four files
PARQUET_ROW_GROUP_ROWS = 65_536
# every record carries a string key, and the jobs read it (--key_feature), as keyed jobs do
KEY_FEATURE = "id"
TFRECORD, PARQUET = "tfrecord", "parquet"
PREPARE, KERAS_EXPORT = "models.prepare", "model.export()"
# the tf.Example workloads' modes, in the order a repeat runs them (raw first: the reference)
EXAMPLE_MODES = ("raw", "raw-chunked", "tfx-bsl-beam", "tfx-bsl", "fast", "fast-parquet", "graph-x2",
                 "raw-dense", "fast-dense")
IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build_model: Callable
    make_values: Callable[[np.random.Generator, int], List[dict]]
    modes: Tuple[str, ...]  # what bench.run measures, in order; modes[0] is the reference (raw TF)
    tiny_records: int  # the start-up probe: small next to every measured input
    feature_spec: dict = dataclasses.field(default_factory=dict)
    export: str = PREPARE
    prepare_options: dict = dataclasses.field(default_factory=dict)  # models.prepare's image_inputs, ...
    data_format: str = TFRECORD
    raw_batch_size: int = 1024  # the batch the raw modes call the signature on
    baseline: Optional[str] = None  # the "vs tfx-bsl" mode, where the workload runs one

    @property
    def reference(self) -> str:
        return self.modes[0]


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


def build_resnet50():
    import keras

    keras.utils.set_random_seed(3)
    pixels = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    return keras.applications.ResNet50(weights=None, input_tensor=pixels)  # weights=None: nothing downloaded


def mlp_values(rng, n):
    block = rng.normal(size=(n, 32)).astype(np.float32)
    return [{"features": row} for row in block]


def cnn_values(rng, n):
    return [{"image": rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)} for _ in range(n)]


def smooth_noise_image(rng) -> np.ndarray:
    """A 224x224x3 uint8 image: a coarse random grid (8 to 32 cells a side) upsampled, plus a
    little per-pixel noise, so JPEG compresses it to the 10-25 KB of a photo (flat noise would
    not compress, a flat colour would be a few hundred bytes)."""
    import tensorflow as tf

    cells = int(rng.integers(8, 33))
    coarse = rng.uniform(0, 255, size=(1, cells, cells, 3)).astype(np.float32)
    image = tf.image.resize(coarse, [IMAGE_SIZE, IMAGE_SIZE], method="bicubic")[0].numpy()
    image += rng.normal(0, rng.uniform(3, 9), size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_values(rng, n):
    import tensorflow as tf

    return [{"image": tf.io.encode_jpeg(smooth_noise_image(rng), quality=90).numpy()} for _ in range(n)]


WORKLOADS = {
    "A": Workload("A", "MLP 32 -> 256 -> 256 -> 10", build_mlp, mlp_values, EXAMPLE_MODES, 1024,
                  baseline="tfx-bsl-beam"),
    "A-dense": Workload("A-dense", "MLP 32 -> 256 -> 256 -> 10, model.export(), Parquet in and out",
                        build_mlp, mlp_values, ("raw-arrays", "fast-parquet-io"), 1024,
                        export=KERAS_EXPORT, data_format=PARQUET),
    "B": Workload("B", "CNN 64x64x3 uint8 (raw bytes) -> 10", build_cnn, cnn_values, EXAMPLE_MODES, 64,
                  feature_spec={"image": {"dtype": "uint8", "shape": [64, 64, 3], "encoding": "raw"}},
                  baseline="tfx-bsl-beam"),
    # raw calls ResNet50 on 32 images: the engine's chunks of 512 KiB hold about 29 of these JPEGs
    "C": Workload("C", "ResNet50 224x224, JPEG bytes in", build_resnet50, jpeg_values, ("raw", "fast"), 8,
                  prepare_options={"image_inputs": {"pixels": "image"}, "image_scale": "symmetric"},
                  raw_batch_size=32),
}


def ensure_model(workload: Workload, root: str) -> str:
    """The workload's model under root/models/<name>/<version>/ (built once); returns the version dir."""
    from models.serving import layout

    base = os.path.join(root, "models", workload.name)
    if not layout.list_versions(base):
        if workload.export == KERAS_EXPORT:
            keras_export(workload.build_model(), base)
        else:
            from models.prepare import prepare_model
            from models.serving.feature_spec import spec_from_json

            spec = spec_from_json(workload.feature_spec) if workload.feature_spec else None
            prepare_model(workload.build_model(), base, feature_spec=spec, **workload.prepare_options)
    return layout.resolve_version_dir(base)


def keras_export(model, base: str) -> str:
    """Keras' own `model.export()` (its serving_default takes the model's dense inputs) into
    base/1, written beside it first so that an interrupted export is never taken for a model."""
    staged, final = os.path.join(base, ".staging-1"), os.path.join(base, "1")
    shutil.rmtree(staged, ignore_errors=True)
    os.makedirs(base, exist_ok=True)
    model.export(staged)
    os.rename(staged, final)
    return final


def ensure_data(workload: Workload, root: str, records: int, tag: str = "") -> str:
    """The workload's input of `records` records (written once, under root/data/); returns its glob."""
    if workload.data_format == PARQUET:
        return ensure_parquet(workload, root, records, tag)
    return ensure_tfrecords(workload, root, records, tag)


def ensure_tfrecords(workload: Workload, root: str, records: int, tag: str = "") -> str:
    """Shards of SHARD_RECORDS records under root/data/<name><tag>-<records>-keyed/; returns the glob."""
    from models.serving.examples import make_example
    from models.serving.feature_spec import spec_from_json
    from transforms.sources.framing import encode_record

    spec = spec_from_json(workload.feature_spec) if workload.feature_spec else None

    def write(path, rng, part, count):
        with open(path, "wb") as f:
            for start in range(0, count, 10_000):
                values = workload.make_values(rng, min(10_000, count - start))
                f.write(b"".join(encode_record(make_example(dict(v, **{KEY_FEATURE: f"{part}-{start + i}"}),
                                                            spec).SerializeToString())
                                 for i, v in enumerate(values)))

    return cached_files(os.path.join(root, "data", f"{workload.name}{tag}-{records}-keyed"), records,
                        SHARD_RECORDS, "tfrecord", write)


def cached_files(directory: str, records: int, per_file: int, suffix: str, write) -> str:
    """The glob of records rows in files of per_file under directory, each written once by
    write(path, rng, part, count) (a _SUCCESS file marks a complete set; the data depends on
    records alone)."""
    done = os.path.join(directory, "_SUCCESS")
    if not os.path.exists(done):
        os.makedirs(directory, exist_ok=True)
        rng = np.random.default_rng(records)
        files = max(1, -(-records // per_file))
        for part in range(files):
            write(os.path.join(directory, f"part-{part:05d}-of-{files:05d}.{suffix}"), rng, part,
                  min(per_file, records - part * per_file))
        open(done, "w").close()
    return os.path.join(directory, f"part-*.{suffix}")


def parquet_table(values: List[dict], keys: List[str]):
    """An Arrow table of one row per value dict: each array value a fixed-size-list<float32, n>
    column of its name, and the string key column KEY_FEATURE."""
    import pyarrow as pa

    columns = {}
    for name in values[0]:
        block = np.stack([v[name] for v in values]).astype(np.float32)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
    columns[KEY_FEATURE] = pa.array(keys, pa.string())
    return pa.table(columns)


def ensure_parquet(workload: Workload, root: str, records: int, tag: str = "") -> str:
    """Files of PARQUET_FILE_ROWS rows (row groups of PARQUET_ROW_GROUP_ROWS) under
    root/data/<name><tag>-<records>-parquet/; returns the glob."""
    import pyarrow.parquet as pq

    def write(path, rng, part, count):
        writer = None
        for start in range(0, count, PARQUET_ROW_GROUP_ROWS):
            n = min(PARQUET_ROW_GROUP_ROWS, count - start)
            table = parquet_table(workload.make_values(rng, n), [f"{part}-{start + i}" for i in range(n)])
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
        writer.close()

    return cached_files(os.path.join(root, "data", f"{workload.name}{tag}-{records}-parquet"), records,
                        PARQUET_FILE_ROWS, "parquet", write)
