"""How a raw feature becomes a model input inside the serving signature: plain data, JSON-ready.

A feature with a `preprocess` entry in the feature spec is stored in the tf.Example as one bytes
value (dtype string, shape []) and reaches the model through in-graph preprocessing:

- image: {"kind": "image", "input": "pixels", "height": 8, "width": 8, "channels": 3,
  "scale": "unit", "dtype": "float32"}: JPEG/PNG (or GIF/BMP) bytes decoded with `channels`
  channels, resized (bilinear) to height x width, scaled, cast to dtype.
  scale "unit": x / 255 (0..1); "symmetric": x / 127.5 - 1 (-1..1); "none": the 0..255 values.
- text: {"kind": "text", "input": "tokens", "length": 6, "vocab": "vocab_tokens.txt",
  "vocab_size": 1000, "dtype": "int32"}: lower-cased, split on whitespace, each word mapped
  through the vocabulary (file under the SavedModel's assets/, one word per line), padded with
  PAD_ID or truncated to length. Ids: PAD_ID 0, OOV_ID 1 for a word not in the vocabulary, the
  word on line i (0-based) FIRST_WORD_ID + i: Keras TextVectorization's numbering.

No TensorFlow here: models.preparation.preprocessing holds the graph side.
"""

import dataclasses
from typing import Any, Dict, Mapping, Tuple, Union

IMAGE, TEXT = "image", "text"
SCALES = ("unit", "symmetric", "none")
CHANNELS = (1, 3, 4)
PAD_ID, OOV_ID, FIRST_WORD_ID = 0, 1, 2

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


class PreprocessSpecError(ValueError):
    """A preprocessing entry that cannot be built (see models.serving.feature_spec.FeatureSpecError)."""


@dataclasses.dataclass(frozen=True)
class ImageInput:
    input: str  # the model input it feeds
    height: int
    width: int
    channels: int
    scale: str
    dtype: str = "float32"

    kind = IMAGE

    def __post_init__(self):
        if any(not isinstance(d, int) or d < 1 for d in (self.height, self.width)):
            raise PreprocessSpecError(f"image input {self.input!r}: height and width must be positive")
        if self.channels not in CHANNELS:
            raise PreprocessSpecError(
                f"image input {self.input!r} has {self.channels} channels; images decode to {CHANNELS}")
        if self.scale not in SCALES:
            raise PreprocessSpecError(f"image input {self.input!r}: scale {self.scale!r} is not one of {SCALES}")
        if self.dtype not in _FLOAT_DTYPES + _INT_DTYPES:
            raise PreprocessSpecError(f"image input {self.input!r}: model dtype {self.dtype!r} is not numeric")
        if self.dtype in _INT_DTYPES and self.scale != "none":
            raise PreprocessSpecError(
                f"image input {self.input!r} is {self.dtype}: scale {self.scale!r} needs a float input "
                "(use scale none)")

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self.height, self.width, self.channels)

    def to_json(self) -> Dict[str, Any]:
        return {"kind": IMAGE, "input": self.input, "height": self.height, "width": self.width,
                "channels": self.channels, "scale": self.scale, "dtype": self.dtype}

    def describe(self) -> str:
        return (f"encoded image (JPEG/PNG) -> {self.input} {self.dtype}{list(self.shape)}, "
                f"scale {self.scale}")


@dataclasses.dataclass(frozen=True)
class TextInput:
    input: str
    length: int
    vocab: str  # file name under the SavedModel's assets/
    vocab_size: int
    dtype: str = "int64"

    kind = TEXT

    def __post_init__(self):
        if not isinstance(self.length, int) or self.length < 1:
            raise PreprocessSpecError(f"text input {self.input!r}: length must be positive")
        if not self.vocab or "/" in self.vocab:
            raise PreprocessSpecError(f"text input {self.input!r}: vocab is a file name under assets/")
        if self.dtype not in _INT_DTYPES + _FLOAT_DTYPES:
            raise PreprocessSpecError(f"text input {self.input!r}: model dtype {self.dtype!r} is not numeric")

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self.length,)

    def to_json(self) -> Dict[str, Any]:
        return {"kind": TEXT, "input": self.input, "length": self.length, "vocab": self.vocab,
                "vocab_size": self.vocab_size, "dtype": self.dtype}

    def describe(self) -> str:
        return (f"text -> {self.input} {self.dtype}{list(self.shape)} via assets/{self.vocab} "
                f"({self.vocab_size} words; pad {PAD_ID}, out-of-vocabulary {OOV_ID})")


Preprocess = Union[ImageInput, TextInput]
_KINDS = {IMAGE: ImageInput, TEXT: TextInput}


def preprocess_from_json(obj: Mapping[str, Any]) -> Preprocess:
    if not isinstance(obj, Mapping) or obj.get("kind") not in _KINDS:
        raise PreprocessSpecError(f"preprocess must be an object with kind {sorted(_KINDS)}, got {obj!r}")
    cls = _KINDS[obj["kind"]]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(obj) - fields - {"kind"}
    if unknown:
        raise PreprocessSpecError(f"{obj['kind']} preprocess: unknown fields {sorted(unknown)}")
    missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - set(obj)
    if missing:
        raise PreprocessSpecError(f"{obj['kind']} preprocess: missing fields {sorted(missing)}")
    return cls(**{k: v for k, v in obj.items() if k != "kind"})
