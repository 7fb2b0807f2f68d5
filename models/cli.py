"""Command-line parsing shared by the CLIs: a misspelt flag is an error that names the closest
known flag ("unknown flag --modle; did you mean --model?"), never a silently ignored one."""

import argparse
import difflib
import sys
from typing import Iterable, Optional

from models.tf_console import VERBOSE_FLAG, VERBOSE_HELP

_UNRECOGNIZED = "unrecognized arguments: "


def closest_flag(name: str, known: Iterable[str]) -> Optional[str]:
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return matches[0] if matches else None


def unknown_flag_message(name: str, known: Iterable[str]) -> str:
    close = closest_flag(name, known)
    return f"unknown flag {name}" + (f"; did you mean {close}?" if close else "")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a suggestion for each unknown flag, checked before required flags are (so
    `--modle x` is not reported as a missing --model), and no abbreviations."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        known = [o for action in self._actions for o in action.option_strings]
        unknown = [a.split("=", 1)[0] for a in args
                   if a.startswith("--") and a != "--" and a.split("=", 1)[0] not in known]
        if unknown:
            self.error("; ".join(unknown_flag_message(flag, known) for flag in unknown))
        return super().parse_args(args, namespace)

    def error(self, message):
        if message.startswith(_UNRECOGNIZED):
            known = [o for action in self._actions for o in action.option_strings]
            flags = [a.split("=", 1)[0] for a in message[len(_UNRECOGNIZED):].split() if a.startswith("--")]
            if flags:
                message = "; ".join(unknown_flag_message(flag, known) for flag in flags)
        super().error(message)
