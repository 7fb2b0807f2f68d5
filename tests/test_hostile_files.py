"""Hostile input files: bounded memory whatever they hold, and every record accounted for."""

import base64
import hashlib
import os

from transforms.records.dead_letters import FIELDS, MAX_INPUT_BYTES, InputHead, dead_letter

# --- dead letters keep a bounded head ----------------------------------------------------------


def test_a_dead_letter_keeps_64_kib_of_its_input_with_the_whole_length_and_sha256():
    raw = os.urandom(MAX_INPUT_BYTES * 3 + 7)
    row = dead_letter("decode", "not a tf.Example", key="f:1", raw=raw)
    assert list(row) == list(FIELDS)
    assert base64.b64decode(row["input_base64"]) == raw[:65536]
    assert row["input_size"] == len(raw) and row["input_sha256"] == hashlib.sha256(raw).hexdigest()
    small = dead_letter("decode", "x", raw=b"abc")
    assert base64.b64decode(small["input_base64"]) == b"abc" and small["input_size"] == 3
    skipped = dead_letter("read", "too large", raw=InputHead(raw[:100], 5 * 10 ** 9))
    assert base64.b64decode(skipped["input_base64"]) == raw[:100]
    assert (skipped["input_size"], skipped["input_sha256"]) == (5 * 10 ** 9, None)  # never read whole
    none = dead_letter("infer", "x")
    assert (none["input_base64"], none["input_size"], none["input_sha256"]) == (None, None, None)
