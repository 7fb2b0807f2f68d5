"""Misspelt flags are errors, not silent defaults.

Beam keeps flags it does not know and only logs a warning, so `--outptu_format tfrecord` would
run the job with the default format. Every command here checks its flags against every option
Beam and this package define (all PipelineOptions subclasses, so any real Beam option passes)
and names the closest known flag for each unknown one.
"""

from typing import Iterable, List, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from models.cli import unknown_flag_message


def known_flags(extra: Iterable[str] = ()) -> List[str]:
    """Every --flag of every PipelineOptions class imported so far, and extra ones."""
    classes = {}
    pending = list(PipelineOptions.__subclasses__())
    while pending:  # subclasses of subclasses too
        cls = pending.pop()
        classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        pending.extend(cls.__subclasses__())
    seen = set(extra)
    for cls in classes.values():  # a parser each: classes may share a flag
        seen.update(flags_of(cls))
    return sorted(seen)


def flags_of(options_class) -> List[str]:
    """The --flags one PipelineOptions class defines."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    options_class._add_argparse_args(parser)  # pylint: disable=protected-access
    return [o for action in parser._actions for o in action.option_strings if o.startswith("--")]  # pylint: disable=protected-access


def foreign_flags(argv: Sequence[str], options_class) -> List[str]:
    """The flags in argv that options_class defines (another command's flags, say)."""
    defined = set(flags_of(options_class))
    return sorted({a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in defined})


def unknown_flag_problems(argv: Sequence[str], extra: Iterable[str] = ()) -> List[str]:
    """'unknown flag --modle; did you mean --model?' for each flag in argv that no option
    defines (values are not flags; '--flag=value' is read as --flag)."""
    known = known_flags(extra)
    known_set = set(known)
    names = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--") and arg != "--"]
    return [unknown_flag_message(name, known) for name in names if name not in known_set]
