"""Small SavedModels whose graphs use ops from op libraries, built by the tests themselves.

text_model: tensorflow-text's NormalizeUTF8, RegexSplitWithOffsets and TFText>WhitespaceTokenizeWithOffsetsV2
on a parsed tf.Example string feature; ydf_model: a YDF gradient-boosted-trees regressor trained on
random rows, exported by ydf with a serialized tf.Example input (SimpleML* ops, ydf-tf). Both take
serialized tf.Example with an `id` bytes feature (the key). bert_model: a BERT-style text classifier
preprocessed as keras-hub's BertTextClassifier is (BertTokenizer, RoundRobinTrimmer, combine_segments)
whose signature takes the raw `text` strings, not tf.Example. made_up_op_model: a plain model whose
saved_model.pb is edited to name an op type nobody registers. Building them imports the op
libraries, so tests build them in a process of their own (build_in_subprocess) and the jobs under
test start without them.
"""

import json
import os
import subprocess
import sys
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MADE_UP_OP = "MadeUpOpForOpLibraryTests"
TEXTS = ["Hello   world", "ﬁne ﬁsh swim", "one", "", "Ｆｕｌｌ width ｔｅｘｔ here", "a b c d e f"]


def text_examples() -> List[bytes]:
    import tensorflow as tf

    return [tf.train.Example(features=tf.train.Features(feature={
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"t{i}".encode()])),
        "text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
    })).SerializeToString() for i, text in enumerate(TEXTS)]


def build_text_model(version_dir: str) -> str:
    """x -> token_count (int64, whitespace tokens of the NFKC text), words (string: the regex-split
    tokens joined by '|'), score (float32: a variable times the count, plus the text's length)."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    class TextModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.weight = tf.Variable(0.25, dtype=tf.float32)
            self.tokenizer = tf_text.WhitespaceTokenizer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            features = tf.io.parse_example(examples, {
                "id": tf.io.FixedLenFeature([], tf.string),
                "text": tf.io.FixedLenFeature([], tf.string, default_value="")})
            text = tf_text.normalize_utf8(features["text"], "NFKC")
            count = self.tokenizer.tokenize(text).row_lengths()
            words = tf.strings.reduce_join(tf_text.regex_split(text, r"\s+"), axis=1, separator="|")
            length = tf.cast(tf.strings.length(text, unit="UTF8_CHAR"), tf.float32)
            return {"token_count": count, "words": words,
                    "score": self.weight * tf.cast(count, tf.float32) + length}

    module = TextModel()
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})
    return version_dir


def ydf_rows(n: int, seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n).astype(np.float32), rng.uniform(-2, 2, size=n).astype(np.float32)
    return {"x1": x1, "x2": x2, "y": (3 * x1 - x2 * x2 + rng.normal(0, 0.1, size=n)).astype(np.float32)}


def ydf_examples(n: int = 40, seed: int = 7) -> List[bytes]:
    import tensorflow as tf

    rows = ydf_rows(n, seed)
    return [tf.train.Example(features=tf.train.Features(feature={
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"r{i}".encode()])),
        "x1": tf.train.Feature(float_list=tf.train.FloatList(value=[rows["x1"][i]])),
        "x2": tf.train.Feature(float_list=tf.train.FloatList(value=[rows["x2"][i]])),
    })).SerializeToString() for i in range(n)]


def build_ydf_model(version_dir: str) -> str:
    """A GBT regressor of y on x1, x2 (300 random rows, 20 trees) as a TF SavedModel that takes
    serialized tf.Example."""
    import tensorflow as tf
    import ydf

    rows = ydf_rows(300, seed=1)
    model = ydf.GradientBoostedTreesLearner(label="y", task=ydf.Task.REGRESSION, num_trees=20).train(rows)
    model.to_tensorflow_saved_model(version_dir, mode="tf", feed_example_proto=True, feature_specs={
        "x1": tf.io.FixedLenFeature([], tf.float32), "x2": tf.io.FixedLenFeature([], tf.float32)})
    return version_dir


def build_made_up_op_model(version_dir: str) -> str:
    """A string-in, float-out model whose graph names the op type MADE_UP_OP (an Identity renamed
    in saved_model.pb), which no library registers."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            x = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})["x"]
            return {"y": tf.identity(x * 2.0)}

    module = Plain()
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})
    path = os.path.join(version_dir, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved.ParseFromString(f.read())
    renamed = 0
    for function in saved.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "Identity":
                node.op, renamed = MADE_UP_OP, renamed + 1
    assert renamed, "no Identity node to rename"
    with open(path, "wb") as f:
        f.write(saved.SerializeToString())
    return version_dir


# [PAD] 0 [UNK] 1 [CLS] 2 [SEP] 3, then words and "##" suffixes; anything else is [UNK]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "quick", "brown", "fox", "jump", "##s", "##ed", "##ing",
              "over", "lazy", "dog", "hello", "world", "cafe", "fine", "fish", "swim", "日", "本", ",", ".", "!"]
BERT_SEQUENCE_LENGTH = 8  # [CLS], at most 6 word pieces, [SEP]
BERT_TEXTS = ["Hello, world!", "", "Café ﬁne FISH swims", "日本 Ｆｕｌｌ width",
              "The quick brown fox jumped over the lazy dog. The lazy dog jumps!", "   ", "zebra"]


def bert_texts() -> List[bytes]:
    return [text.encode() for text in BERT_TEXTS]


def build_bert_model(version_dir: str) -> str:
    """text (raw strings) -> probs (float32 [n, 2]: softmax of a dense layer on the mean of the
    token embeddings, [PAD] left out), tokens (int64 [n]: word pieces kept by the trimmer). The
    text is preprocessed as keras-hub's BertTextClassifierPreprocessor does: lower-cased
    WordPiece tokens, round-robin trimmed to BERT_SEQUENCE_LENGTH - 2, between [CLS] and [SEP],
    padded with [PAD]."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    class BertClassifier(tf.Module):
        def __init__(self):
            super().__init__()
            table = tf.lookup.StaticVocabularyTable(tf.lookup.KeyValueTensorInitializer(
                BERT_VOCAB, tf.range(len(BERT_VOCAB), dtype=tf.int64)), num_oov_buckets=1)
            self.tokenizer = tf_text.BertTokenizer(table, lower_case=True)
            self.trimmer = tf_text.RoundRobinTrimmer(max_seq_length=BERT_SEQUENCE_LENGTH - 2)
            rng = np.random.default_rng(3)
            self.embedding = tf.Variable(rng.normal(size=(len(BERT_VOCAB), 4)).astype(np.float32))
            self.kernel = tf.Variable(rng.normal(size=(4, 2)).astype(np.float32))
            self.bias = tf.Variable(rng.normal(size=2).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            pieces = self.tokenizer.tokenize(text).merge_dims(-2, -1)  # [n, words, pieces] -> [n, pieces]
            (trimmed,) = self.trimmer.trim([pieces])
            ids, _ = tf_text.combine_segments([trimmed], start_of_sequence_id=2, end_of_segment_id=3)
            ids = ids.to_tensor(default_value=0, shape=[None, BERT_SEQUENCE_LENGTH])
            mask = tf.cast(tf.not_equal(ids, 0), tf.float32)[:, :, None]
            pooled = tf.reduce_sum(tf.gather(self.embedding, ids) * mask, axis=1) / tf.reduce_sum(mask, axis=1)
            return {"probs": tf.nn.softmax(tf.matmul(pooled, self.kernel) + self.bias),
                    "tokens": trimmed.row_lengths()}

    module = BertClassifier()
    tf.saved_model.save(module, version_dir, signatures={"serving_default": module.serve})
    return version_dir


def direct_outputs(version_dir: str, records: List[bytes]) -> Dict[str, list]:
    """The serving_default signature called on records with tf.saved_model.load (the caller has
    imported the op library): {output: one plain value per record}."""
    import tensorflow as tf

    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    outputs = signature(**{name: tf.constant(records)})
    return {key: [_plain(v) for v in value.numpy()] for key, value in outputs.items()}


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


BUILDERS = {"text": build_text_model, "ydf": build_ydf_model, "bert": build_bert_model,
            "made_up_op": build_made_up_op_model}
EXAMPLES = {"text": text_examples, "ydf": ydf_examples, "bert": bert_texts}  # bert: raw texts


def build_in_subprocess(kind: str, version_dir: str) -> Dict[str, list]:
    """Builds the model in a fresh process (which imports its op library) and returns its direct
    outputs on EXAMPLES[kind]() there ({} for made_up_op)."""
    code = ("import json, sys; from tests.support import op_library_models as m; "
            "kind, path = sys.argv[1:]; m.BUILDERS[kind](path); "
            "print(json.dumps(m.direct_outputs(path, m.EXAMPLES[kind]()) if kind in m.EXAMPLES else {}))")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", code, kind, version_dir], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(f"building the {kind} model failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
