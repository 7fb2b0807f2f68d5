"""Secrets hidden wherever a run writes text: manifests, dead letters, logs and the console. Pure.

A secret is the password of a URL (`scheme://user:PASSWORD@host`, or `user:PASSWORD@host` as
HTTP clients print a netloc) and the value of any
`NAME=VALUE` or `"NAME": "VALUE"` part whose name says it holds one (password, token, secret,
sig, key, AccountKey, X-Amz-Signature, api_key, ...), wherever it sits: a URL's query
(`?sig=...`), a connection string (`;AccountKey=...`), a `--model NAME=PATH` argument (whose PATH
is scanned in turn). The secret is replaced by REDACTED; the rest of the text stays as it was.

- redact_text(text): one string;
- redact_options(options): pipeline options by name and value (a secret-looking option name
  hides its whole value);
- redact_values(value): every string inside dicts and lists (a manifest, a dead letter's source);
- redacted_console(): a context in which what the process prints (sys.stdout, sys.stderr) and
  logs (every logging record, its traceback too) is redacted; with_redacted_console(main)
  wraps a command's main in it, and a traceback that escapes main is printed redacted too.
"""

import contextlib
import functools
import logging
import re
import sys
import traceback
from typing import Any, Callable, Dict, Iterator, Mapping

REDACTED = "<redacted>"
# Words that make a name (an option, a key=value pair, a URL query parameter) name a secret
_SECRET_PARTS = {"password", "passwd", "pwd", "secret", "token", "sig", "signature", "credential",
                 "credentials", "apikey", "accountkey", "auth", "authorization", "sas"}
_KEY_QUALIFIERS = {"api", "access", "private", "secret", "account", "shared", "client", "sas"}  # api_key, ...
# USER:PASSWORD@ of a URL, or of a bare netloc as HTTP clients print it ("server at admin:pw@host")
_URL_PASSWORD = re.compile(r"([^\s/:@'\"<>()\[\]]*:)[^@/\s'\"<>]+@")
# NAME=VALUE inside a value: a connection string part, a URL query parameter, a label, NAME=PATH
_NAMED_VALUE = re.compile(r"(?<![\w.-])([A-Za-z][\w.-]*)=([^;&,\s]+)")
# "NAME": "VALUE" (JSON, a dict's repr inside an error message)
_QUOTED_VALUE = re.compile(r"""(["'])([A-Za-z][\w.-]*)\1(\s*:\s*)(["'])([^"'\n]*)\4""")


def is_secret_name(name: str) -> bool:
    """Whether a name says its value is a secret: password, token, sig, key, api_key, AccountKey,
    X-Goog-Signature, ... (words split at any non-letter and at camel case). `key` alone is one
    (`?key=` carries API keys); as the first word of a longer name it is not (key_feature)."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    parts = [p for p in re.split(r"[^a-z0-9]+", words) if p]
    if _SECRET_PARTS & set(parts) or parts == ["key"]:
        return True
    return any(p == "key" and i > 0 and parts[i - 1] in _KEY_QUALIFIERS for i, p in enumerate(parts))


def _named_value(match: "re.Match") -> str:
    name, value = match.group(1), match.group(2)
    if is_secret_name(name):
        return f"{name}={REDACTED}"
    return f"{name}={redact_text(value)}"  # NAME=PATH: the path may hold secrets of its own


def _quoted_value(match: "re.Match") -> str:
    # "key" alone is a row's own key in JSON (a dead letter, a prediction row), not an API key
    if not is_secret_name(match.group(2)) or match.group(2).lower() == "key" or not match.group(5):
        return match.group(0)
    quote, name, colon, value_quote = match.group(1), match.group(2), match.group(3), match.group(4)
    return f"{quote}{name}{quote}{colon}{value_quote}{REDACTED}{value_quote}"


def redact_text(text: str) -> str:
    """text with the secrets inside it hidden (the module docstring says which)."""
    if "=" not in text and "@" not in text and ":" not in text:
        return text  # the common case, no regex
    text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
    text = _QUOTED_VALUE.sub(_quoted_value, text)
    return _NAMED_VALUE.sub(_named_value, text)


def redact_values(value: Any) -> Any:
    """value with redact_text applied to every string in it (dict keys stay as they are)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(redact_values(v) for v in value)
    if isinstance(value, list):
        return [redact_values(v) for v in value]
    return value


def redact_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Options as given, with secrets hidden: the whole value of a secret-looking option name,
    and secret-looking parts of any other value (redact_text)."""
    def clean(name: str, value: Any) -> Any:
        if is_secret_name(name) and value not in (None, False, ""):
            return REDACTED
        if isinstance(value, str):
            return redact_text(value)
        if isinstance(value, list):
            return [clean(name, v) for v in value]
        if isinstance(value, dict):
            return {k: REDACTED if is_secret_name(str(k)) else clean(name, v) for k, v in value.items()}
        return value
    return {name: clean(name, value) for name, value in sorted(options.items())}


class RedactingStream:
    """A text stream whose writes are redacted on the way to the stream it wraps."""

    def __init__(self, stream):
        self.wrapped = stream

    def write(self, text: str) -> int:
        self.wrapped.write(redact_text(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding, ...: the wrapped stream's
        return getattr(self.wrapped, name)


def _formatted_exception(exc_info) -> str:
    """A traceback as logging.Formatter.formatException writes it, redacted."""
    return redact_text("".join(traceback.format_exception(*exc_info)).rstrip("\n"))


def redacting_record_factory(make_record: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A logging record factory that makes records with make_record, then redacts their message
    (arguments merged in) and their traceback text."""
    def make(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # pylint: disable=broad-except  # a bad format string: logging reports it at emit
            return record
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = _formatted_exception(record.exc_info)
        return record
    make.redacting = True
    return make


def print_redacted_exception(kind, value, tb) -> None:
    """A sys.excepthook: the traceback of an exception nobody caught, redacted."""
    sys.stderr.write(redact_text("".join(traceback.format_exception(kind, value, tb))))


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    """sys.stdout, sys.stderr and every logging record redacted while inside (nested: once)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacting", False):
        yield
        return
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(stdout), RedactingStream(stderr)
    logging.setLogRecordFactory(redacting_record_factory(factory))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        logging.setLogRecordFactory(factory)


def with_redacted_console(main: Callable[..., int]) -> Callable[..., int]:
    """A command's main run inside redacted_console(); an exception escaping it is printed
    redacted by the interpreter's last handler (sys.excepthook)."""
    @functools.wraps(main)
    def redacted_main(*args, **kwargs) -> int:
        if sys.excepthook is sys.__excepthook__:
            sys.excepthook = print_redacted_exception
        with redacted_console():
            return main(*args, **kwargs)
    return redacted_main
