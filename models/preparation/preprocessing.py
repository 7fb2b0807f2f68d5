"""Preprocessing inside the serving signature: encoded images and raw text become model inputs.

Kept in the exported graph so that offline (Beam) and online (TF Serving) scoring run the very
same ops and cannot drift. models.prepare options map onto this module:

    --image_input pixels=image --image_scale unit     model input `pixels` from feature `image`
    --text_input tokens=text --vocab vocab.txt        model input `tokens` from feature `text`

The feature spec records each as a `preprocess` entry (models.serving.preprocess_spec, which also states
the scaling and the token ids: pad 0, out-of-vocabulary 1, vocabulary words from 2). Vocabularies
are validated, rewritten one word per line and shipped as SavedModel assets (assets/vocab_<input>.txt),
so an export is self-contained; their lookup tables are tracked by the export, and both loaders
(tf.saved_model.load and the TF1 session loader tfx-bsl uses) run their initializers at load time.

A model that already holds a Keras TextVectorization (or StringLookup) layer takes strings
directly and needs none of this: its tables are tracked by Keras itself.
"""

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Union

import tensorflow as tf

from models.serving.feature_spec import Feature, FeatureSpec, FeatureSpecError, make_spec
from models.serving.preprocess_spec import (
    FIRST_WORD_ID, IMAGE, OOV_ID, PAD_ID, SCALES, ImageInput, PreprocessSpecError, TextInput)

Pairs = Union[None, Mapping[str, str], Sequence[str]]
ASSETS_DIR = "assets"


def parse_pairs(values: Pairs, option: str) -> Dict[str, str]:
    """{model input: feature} from a mapping or from "INPUT=FEATURE" strings (a bare NAME: both)."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return dict(values)
    pairs: Dict[str, str] = {}
    for value in values:
        model_input, _, feature = value.partition("=")
        model_input, feature = model_input.strip(), (feature or model_input).strip()
        if not model_input or not feature:
            raise FeatureSpecError(f"{option} {value!r}: expected MODEL_INPUT=FEATURE")
        if model_input in pairs:
            raise FeatureSpecError(f"{option}: model input {model_input!r} given twice")
        pairs[model_input] = feature
    return pairs


def vocab_paths(vocab: Union[None, str, Mapping[str, str], Sequence[str]], text_inputs: Sequence[str]
                ) -> Dict[str, str]:
    """{text model input: vocabulary path}: one PATH for every text input, or INPUT=PATH each."""
    if not text_inputs:
        if vocab:
            raise FeatureSpecError("--vocab is given without --text_input")
        return {}
    if isinstance(vocab, str):
        vocab = [vocab]
    if isinstance(vocab, Mapping):
        paths = dict(vocab)
    else:
        paths, shared = {}, None
        for value in vocab or ():
            name, sep, path = value.partition("=")
            if sep and name in text_inputs:
                paths[name] = path
            elif shared is None:
                shared = value
            else:
                raise FeatureSpecError("--vocab: give one PATH for all text inputs or INPUT=PATH for each")
        if shared is not None:
            paths = {**{name: shared for name in text_inputs}, **paths}
    missing = [name for name in text_inputs if name not in paths]
    if missing:
        raise FeatureSpecError(f"text inputs {missing} have no vocabulary: pass --vocab PATH")
    return {name: paths[name] for name in text_inputs}


def read_vocab(path: str) -> List[str]:
    """The words of a vocabulary file, one per line, in id order; rejects what could never match."""
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read()
    try:
        words = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise FeatureSpecError(f"vocabulary {path} is not UTF-8 text: {e}") from e
    if not words:
        raise FeatureSpecError(f"vocabulary {path} is empty")
    problems = []
    seen = set()
    for number, word in enumerate(words, 1):
        if not word or any(c.isspace() for c in word):
            problems.append(f"line {number} {word!r} is empty or holds whitespace (text is split on whitespace)")
        elif word in seen:
            problems.append(f"line {number} repeats {word!r}")
        seen.add(word)
    if problems:
        raise FeatureSpecError(f"vocabulary {path}: " + "; ".join(problems[:3]))
    return words


def vocab_asset_name(model_input: str) -> str:
    return "vocab_" + re.sub(r"[^A-Za-z0-9_.-]", "_", model_input) + ".txt"


def write_vocab(words: Sequence[str], path: str) -> str:
    """Writes the words one per line ("\\n"): the file the lookup table reads, copied as an asset."""
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(w + "\n" for w in words))
    return path


def _fixed_shape(model_input: str, spec: tf.TensorSpec, rank: int, what: str) -> List[int]:
    dims = list(spec.shape)
    if len(dims) != rank + 1 or any(d is None for d in dims[1:]):
        raise FeatureSpecError(
            f"model input {model_input!r} has shape {dims}; {what} needs [batch, {', '.join(['n'] * rank)}] "
            "with fixed sizes")
    return dims[1:]


def raw_spec(spec: FeatureSpec, inputs: Mapping[str, tf.TensorSpec], images: Mapping[str, str],
             image_scale: Optional[str], texts: Mapping[str, str],
             vocabularies: Mapping[str, Sequence[str]]) -> FeatureSpec:
    """The spec with each preprocessed model input replaced, in place, by its raw feature.

    images/texts map model input -> feature; vocabularies maps text model input -> words.
    """
    unknown = sorted((set(images) | set(texts)) - set(inputs))
    if unknown:
        raise FeatureSpecError(f"preprocessing names {unknown}, which are not model inputs {sorted(inputs)}")
    both = sorted(set(images) & set(texts))
    if both:
        raise FeatureSpecError(f"model inputs {both} are given as both image and text inputs")
    if image_scale is not None and not images:
        raise FeatureSpecError("--image_scale is given without --image_input")
    if images and image_scale not in SCALES:
        raise FeatureSpecError(f"--image_input needs --image_scale, one of {SCALES} (got {image_scale!r})")
    replaced: Dict[str, Feature] = {}
    try:
        for model_input, feature in images.items():
            height, width, channels = _fixed_shape(model_input, inputs[model_input], 3, "an image input")
            preprocess = ImageInput(model_input, height, width, channels, image_scale,
                                    tf.as_dtype(inputs[model_input].dtype).name)
            replaced[model_input] = Feature(feature, "string", (), preprocess=preprocess)
        for model_input, feature in texts.items():
            (length,) = _fixed_shape(model_input, inputs[model_input], 1, "a text input")
            preprocess = TextInput(model_input, length, vocab_asset_name(model_input),
                                   len(vocabularies[model_input]), tf.as_dtype(inputs[model_input].dtype).name)
            replaced[model_input] = Feature(feature, "string", (), preprocess=preprocess)
    except PreprocessSpecError as e:
        raise FeatureSpecError(str(e)) from e
    return make_spec(replaced.get(f.name, f) for f in spec)


# --------------------------------------------------------------------------------------------
# the graph side
# --------------------------------------------------------------------------------------------

def decode_images(encoded: tf.Tensor, p: ImageInput) -> tf.Tensor:
    """[batch] encoded images -> [batch, height, width, channels] of p.dtype, scaled.

    An undecodable value (not an image, truncated) fails the whole call: the pipelines then
    isolate that record as a dead letter by halving the batch.
    """
    def decode_one(data):
        image = tf.io.decode_image(data, channels=p.channels, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, p.channels])
        return tf.image.resize(image, [p.height, p.width], method="bilinear")  # float32

    pixels = tf.map_fn(decode_one, encoded, fn_output_signature=tf.TensorSpec(p.shape, tf.float32))
    pixels = scale_pixels(pixels, p.scale)
    if tf.as_dtype(p.dtype).is_integer:
        pixels = tf.round(pixels)
    return tf.cast(pixels, p.dtype)


def scale_pixels(pixels: tf.Tensor, scale: str) -> tf.Tensor:
    if scale == "unit":
        return pixels / 255.0
    if scale == "symmetric":
        return pixels / 127.5 - 1.0
    return pixels


def vocab_table(path: str, size: int) -> tf.lookup.StaticHashTable:
    """word -> FIRST_WORD_ID + line number; any other word -> OOV_ID."""
    initializer = tf.lookup.TextFileInitializer(
        path, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        vocab_size=size, value_index_offset=FIRST_WORD_ID)
    return tf.lookup.StaticHashTable(initializer, default_value=OOV_ID)


def text_to_ids(text: tf.Tensor, table: tf.lookup.StaticHashTable, p: TextInput) -> tf.Tensor:
    """[batch] strings -> [batch, length] ids: lower-case, split on whitespace, look up, pad/truncate."""
    words = tf.strings.split(tf.strings.lower(text, encoding="utf-8"))
    ids = table.lookup(words).to_tensor(default_value=PAD_ID, shape=[None, p.length])
    return tf.cast(ids, p.dtype)


class Preprocessor(tf.Module):
    """Parsed raw features -> the model inputs they feed. Its tables must be tracked by the export."""

    def __init__(self, spec: FeatureSpec, vocab_files: Mapping[str, str]):
        """vocab_files maps each text feature's model input to its (local) vocabulary file."""
        super().__init__(name="preprocessor")
        self._features = tuple(f for f in spec if f.preprocess is not None)
        self.tables = {f.model_input: vocab_table(vocab_files[f.model_input], f.preprocess.vocab_size)
                       for f in self._features if f.preprocess.kind != IMAGE}

    def __call__(self, parsed: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        inputs = {}
        for f in self._features:
            value = tf.reshape(parsed[f.name], [-1])
            if f.preprocess.kind == IMAGE:
                inputs[f.model_input] = decode_images(value, f.preprocess)
            else:
                inputs[f.model_input] = text_to_ids(value, self.tables[f.model_input], f.preprocess)
        return inputs

    @property
    def resources(self) -> List[tf.lookup.StaticHashTable]:
        return list(self.tables.values())


def read_vocabularies(export_dir: str, spec: FeatureSpec) -> Dict[str, List[str]]:
    """{text feature name: vocabulary words} read back from the export's assets."""
    return {f.name: read_vocab(os.path.join(export_dir, ASSETS_DIR, f.preprocess.vocab))
            for f in spec if f.preprocess is not None and f.preprocess.kind != IMAGE}
