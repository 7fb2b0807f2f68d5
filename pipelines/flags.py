"""Misspelt flags are errors, not silent defaults.

Beam keeps flags it does not know and only logs a warning, so `--outptu_format tfrecord` would
run the job with the default format. Every command here checks its flags against every option
Beam and this package define (all PipelineOptions subclasses, so any real Beam option passes)
and names the closest known flag for each unknown one.
"""

import difflib
from typing import Iterable, List, Sequence

from apache_beam.options.pipeline_options import PipelineOptions


def known_flags(extra: Iterable[str] = ()) -> List[str]:
    """Every --flag of every PipelineOptions class imported so far, and extra ones."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    classes = {}
    pending = list(PipelineOptions.__subclasses__())
    while pending:  # subclasses of subclasses too
        cls = pending.pop()
        classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        pending.extend(cls.__subclasses__())
    seen = set(extra)
    for cls in classes.values():
        parser = _BeamArgumentParser(allow_abbrev=False)  # one each: classes may share a flag
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
        for action in parser._actions:  # pylint: disable=protected-access
            seen.update(o for o in action.option_strings if o.startswith("--"))
    return sorted(seen)


def unknown_flag_problems(argv: Sequence[str], extra: Iterable[str] = ()) -> List[str]:
    """'unknown flag --modle; did you mean --model?' for each flag in argv that no option
    defines (values are not flags; '--flag=value' is read as --flag)."""
    known = known_flags(extra)
    known_set = set(known)
    problems = []
    for arg in argv:
        if not arg.startswith("--") or arg == "--":
            continue
        name = arg.split("=", 1)[0]
        if name in known_set:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        problems.append(f"unknown flag {name}" + (f"; did you mean {close[0]}?" if close else ""))
    return problems
