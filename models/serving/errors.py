"""Errors as one line of text, the same on both engines and on every run. Pure.

TensorFlow's messages carry a stack-trace preamble and, from eager calls, a traced function's
name with a per-process counter; dead letters, load errors and reports show the message without
them.
"""

import re

_TF_NOISE = ("Graph execution error:", "Detected at node", "<stack traces unavailable>")


def error_text(error: BaseException) -> str:
    """One line of what went wrong; TensorFlow's own messages without their stack-trace preamble."""
    message = getattr(error, "message", None) or str(error) or repr(error)
    return clean_message(message)


# eager TensorFlow appends the traced function's name, which carries a per-process counter
_EAGER_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]")


def clean_message(message: str) -> str:
    """One line, without TensorFlow's stack-trace preamble or its per-process op names, so the
    same failure reads the same on both engines and on every run."""
    lines = [line for line in message.splitlines() if not line.strip().startswith(_TF_NOISE)]
    return _EAGER_OP_SUFFIX.sub("", " ".join(" ".join(lines).split()))
