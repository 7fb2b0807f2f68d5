"""SavedModels whose signatures take tensors, not serialized tf.Example, as people export them:
a Keras 3 `model.export()` with two dense inputs, a TF2 module with typed inputs (float, int64,
bool and string per-example values, an int32 input of any length), a TF1 SavedModelBuilder export
with a float placeholder, and a text model whose one input is the raw string (no parse op).
Random weights; each call gives the model's outputs directly, the reference rows are checked against.
"""

import os
from typing import Dict

import numpy as np


def keras_two_inputs_export(export_dir: str, seed: int = 0) -> str:
    """Keras 3's documented serving export: measurements float32[None, 4], context
    float32[None, 2] -> output_0 float32[None, 3] (softmax)."""
    import keras

    keras.utils.set_random_seed(seed)
    measurements = keras.Input((4,), name="measurements")
    context = keras.Input((2,), name="context")
    hidden = keras.layers.Dense(5, activation="relu")(keras.layers.Concatenate()([measurements, context]))
    probs = keras.layers.Dense(3, activation="softmax")(hidden)
    keras.Model({"measurements": measurements, "context": context}, probs).export(export_dir, verbose=False)
    return export_dir


def typed_module_export(export_dir: str) -> str:
    """A TF2 module: x float32[None, 3], n int64[None], flag bool[None], word string[None],
    ids int32[None, None] -> score float32, ids_sum int32, ids_len int64, echo string, positive bool."""
    import tensorflow as tf

    class Typed(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([0.5, -1.0, 2.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="n"),
                                      tf.TensorSpec([None], tf.bool, name="flag"),
                                      tf.TensorSpec([None], tf.string, name="word"),
                                      tf.TensorSpec([None, None], tf.int32, name="ids")])
        def serve(self, x, n, flag, word, ids):
            score = tf.reduce_sum(x * self.w, axis=1) * tf.where(flag, 2.0, 1.0) + tf.cast(n, tf.float32)
            return {"score": score, "ids_sum": tf.reduce_sum(ids, axis=1),
                    "ids_len": tf.fill(tf.shape(ids)[:1], tf.cast(tf.shape(ids)[1], tf.int64)),
                    "echo": tf.strings.join([word, "!"]), "positive": score > 0}

    module = Typed()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def typed_direct(export_dir: str, x, n, flag, word, ids) -> Dict[str, np.ndarray]:
    """The typed module called directly on one record's values."""
    import tensorflow as tf

    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    out = fn(x=tf.constant([x], tf.float32), n=tf.constant([n], tf.int64), flag=tf.constant([flag]),
             word=tf.constant([word]), ids=tf.constant([ids], tf.int32, shape=[1, len(ids)]))
    return {name: value.numpy()[0] for name, value in out.items()}


def tf1_placeholder_export(export_dir: str) -> str:
    """TF1 SavedModelBuilder: a float32[None, 2] placeholder "x" -> "y" = x . [3, -2] + 1, predict."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        y = tf.linalg.matvec(x, tf.constant([3.0, -2.0])) + 1.0
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(export_dir)
            signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING],
                                                 signature_def_map={"serving_default": signature})
            builder.save()
    return export_dir


def raw_text_export(export_dir: str) -> str:
    """One string input "text" [None] that is the raw text (no tf.Example parse): words and
    characters per text, and the text upper-cased."""
    import tensorflow as tf

    class Text(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            words = tf.strings.split(text)
            return {"words": tf.cast(words.row_lengths(), tf.int64),
                    "chars": tf.strings.length(text, unit="UTF8_CHAR"), "upper": tf.strings.upper(text)}

    module = Text()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    return export_dir


def load_signature(export_dir: str):
    import tensorflow as tf

    return tf.saved_model.load(export_dir).signatures["serving_default"]


def version_dir(base: str, name: str) -> str:
    """base/name/1, TF Serving's layout, created."""
    path = os.path.join(base, name, "1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path
