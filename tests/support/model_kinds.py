"""SavedModels of the kinds people bring, exported the way their own tools export them (not through
models.prepare), small and with random weights. Each has one `serving_default` signature taking
serialized tf.Examples ("examples") and parsing them inside the graph; every record also carries
the string key `id`, which no model reads.

- transform_style_export: what a tf.Transform preprocessing graph in front of a model looks like
  once exported: a vocabulary file (assets/vocab.txt, a tf.saved_model.Asset) behind a
  StaticHashTable mapping `word` to ids (VOCAB's line numbers; anything else the OOV id
  len(VOCAB)), `amount` scaled to a z-score by constants, then a dense layer:
  {"word_id": int64 [n], "amount_z": float32 [n], "logits": float32 [n, 2], "probabilities": [n, 2]}.
- retrieval_export: TensorFlow Recommenders' BruteForce index: a query embedding (a hashed `user`
  embedding plus `age` times a vector), scored against a fixed table of CANDIDATES embeddings,
  top TOP_K: {"scores": float32 [n, k], "identifiers": string [n, k]}.
- tf_keras_multi_head_export: a tf-keras (Keras 2) functional model with two named heads of
  different shapes, {"class_probs": float32 [n, 3], "value": float32 [n, 1]}, saved by
  tf.saved_model.save with a tf.function signature that parses the examples and calls it.
- mixed_dtypes_export: outputs of every dtype a row can hold, from `x` (float32[3]) and `name`:
  {"label": string [n], "count": int64 [n], "positive": bool [n], "score": float32 [n],
   "top": int32 [n], "wide": float64 [n], "vec": float32 [n, 3], "signs": bool [n, 3]}
  (label_shape=(1,): the label [n, 1], which tfx-bsl's handler can run).

`*_records(n)` give matching serialized examples with keys "r0".."r{n-1}" (a few values the
model treats specially among them: an out-of-vocabulary word, zero and negative sums, ...).
"""

import os
import tempfile
from typing import List, Tuple

import numpy as np

VOCAB = ("apple", "banana", "cherry", "date")
AMOUNT_MEAN, AMOUNT_STD = 12.5, 4.0  # what tft.scale_to_z_score would have computed
CANDIDATES = tuple(f"item-{i}" for i in range(8))
TOP_K = 3
EMBEDDING = 4
USER_BUCKETS = 16


def _example(values: dict) -> bytes:
    from models.serving.examples import make_example

    return make_example(values).SerializeToString()


def _serve(export_dir: str, module, parse: dict, compute) -> str:
    """Saves module with a serving_default that parses serialized examples and calls compute."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        return compute(tf.io.parse_example(examples, parse))

    module.serve = serve
    tf.saved_model.save(module, export_dir, signatures={"serving_default": serve})
    return export_dir


def transform_style_export(export_dir: str, seed: int = 1) -> str:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:  # tf.saved_model.save copies it into assets/
        vocab_path = os.path.join(scratch, "vocab.txt")
        with open(vocab_path, "w") as f:
            f.write("\n".join(VOCAB) + "\n")
        module = tf.Module()
        module.vocab = tf.saved_model.Asset(vocab_path)
        module.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(module.vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
        module.kernel = tf.Variable(rng.normal(size=(len(VOCAB) + 2, 2)).astype(np.float32))
        module.bias = tf.Variable(rng.normal(size=(2,)).astype(np.float32))

        def compute(f):
            found = module.table.lookup(f["word"])
            word_id = tf.where(found < 0, tf.constant(len(VOCAB), tf.int64), found)
            amount_z = (f["amount"] - AMOUNT_MEAN) / AMOUNT_STD
            dense = tf.concat([tf.one_hot(word_id, len(VOCAB) + 1), amount_z[:, None]], axis=1)
            logits = tf.matmul(dense, module.kernel) + module.bias
            return {"word_id": word_id, "amount_z": amount_z, "logits": logits,
                    "probabilities": tf.nn.softmax(logits)}

        return _serve(export_dir, module, {"word": tf.io.FixedLenFeature([], tf.string, default_value=""),
                                           "amount": tf.io.FixedLenFeature([], tf.float32)}, compute)


def transform_style_records(n: int) -> List[bytes]:
    words = list(VOCAB) + ["elderberry", "Apple", ""]  # not in the vocabulary: the OOV id
    return [_example({"id": f"r{i}", "word": words[i % len(words)], "amount": float(3 * i - 4)})
            for i in range(n)]


def retrieval_export(export_dir: str, seed: int = 2) -> str:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    module = tf.Module()
    module.users = tf.Variable(rng.normal(size=(USER_BUCKETS, EMBEDDING)).astype(np.float32))
    module.age = tf.Variable(rng.normal(size=(EMBEDDING,)).astype(np.float32))
    module.candidates = tf.Variable(rng.normal(size=(len(CANDIDATES), EMBEDDING)).astype(np.float32))
    module.identifiers = tf.Variable(tf.constant(CANDIDATES))

    def compute(f):  # BruteForce: the query against every candidate, the top k
        query = (tf.gather(module.users, tf.strings.to_hash_bucket_fast(f["user"], USER_BUCKETS))
                 + f["age"][:, None] * module.age)
        scores, indices = tf.math.top_k(tf.matmul(query, module.candidates, transpose_b=True), k=TOP_K)
        return {"scores": scores, "identifiers": tf.gather(module.identifiers, indices)}

    return _serve(export_dir, module, {"user": tf.io.FixedLenFeature([], tf.string),
                                       "age": tf.io.FixedLenFeature([], tf.float32)}, compute)


def retrieval_records(n: int) -> List[bytes]:
    return [_example({"id": f"r{i}", "user": f"user-{i % 5}", "age": 0.1 * i}) for i in range(n)]


def tf_keras_multi_head_export(export_dir: str, seed: int = 3) -> str:
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    x = tf_keras.Input(shape=(4,), name="x")
    hidden = tf_keras.layers.Dense(8, activation="relu")(x)
    heads = {"class_probs": tf_keras.layers.Dense(3, activation="softmax", name="class_probs")(hidden),
             "value": tf_keras.layers.Dense(1, name="value")(hidden)}
    model = tf_keras.Model(x, heads)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(examples):
        return model(tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([4], tf.float32)})["x"])

    tf.saved_model.save(model, export_dir, signatures={"serving_default": serve})
    return export_dir


def multi_head_records(n: int) -> List[bytes]:
    rng = np.random.default_rng(30)
    return [_example({"id": f"r{i}", "x": [float(v) for v in rng.normal(size=4).astype(np.float32)]})
            for i in range(n)]


def mixed_dtypes_export(export_dir: str, seed: int = 4, label_shape: Tuple[int, ...] = ()) -> str:
    """label_shape (1,): the label as [n, 1], the one change tfx-bsl's handler needs (its predict
    logs take output[i].dtype, which a string output of per-example shape [] has not: a bytes)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    module = tf.Module()
    module.weights = tf.Variable(rng.normal(size=(3,)).astype(np.float32))

    def compute(f):
        x = f["x"]
        total = tf.reduce_sum(x, axis=1)
        label = tf.strings.join([f["name"], tf.where(total > 0, "pos", "neg")], separator=":")
        return {"label": tf.reshape(label, [-1, *label_shape]),
                "count": tf.reduce_sum(tf.cast(x > 0, tf.int64), axis=1),
                "positive": total > 0,
                "score": tf.reduce_sum(x * module.weights, axis=1),
                "top": tf.argmax(x, axis=1, output_type=tf.int32),
                "wide": tf.cast(total, tf.float64) / 3.0,  # float64 digits a float32 cannot hold
                "vec": x * module.weights,
                "signs": x >= 0}

    return _serve(export_dir, module, {"x": tf.io.FixedLenFeature([3], tf.float32),
                                       "name": tf.io.FixedLenFeature([], tf.string)}, compute)


def mixed_dtypes_records(n: int) -> List[bytes]:
    rng = np.random.default_rng(40)
    names = ["alpha", "béta", "γ", "d"]  # non-ASCII UTF-8 text too
    xs = [[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]] + [list(rng.normal(size=3)) for _ in range(max(n - 2, 0))]
    return [_example({"id": f"r{i}", "x": [float(np.float32(v)) for v in xs[i]], "name": names[i % len(names)]})
            for i in range(n)]
