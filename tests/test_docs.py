"""The docs name only what exists: every module, class and function that the README,
docs/ARCHITECTURE.md, the notebooks and the code's own docstrings and comments name
(`transforms.scoring.executor.score_chunk`, `pipelines/local/demo.py`) is there, and nothing
points outside the repository."""

import importlib
import io
import json
import os
import re
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "transforms", "pipelines", "bench", "tests")
DOTTED = re.compile(r"(?<![\w./-])((?:%s)(?:\.[A-Za-z_]\w*)+)" % "|".join(PACKAGES))
# files of the repository (a name with a source suffix under one of its folders); example paths
# such as models/clf are a user's, not ours
PATH = re.compile(r"(?<![\w./-])((?:%s|docs|docker|tools|notebooks)/[\w./-]*\.(?:py|md|ipynb|sh|txt))\b"
                  % "|".join(PACKAGES))


def doc_files():
    files = ["README.md", "docs/ARCHITECTURE.md", "bench/README.md", "docker/README.md", "Makefile"]
    for folder in ("models", "transforms", "pipelines", "bench", "notebooks"):  # tests name the missing on purpose
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            files += [os.path.relpath(os.path.join(base, n), ROOT) for n in names
                      if n.endswith((".py", ".ipynb")) and "__pycache__" not in base]
    return sorted(f for f in set(files) if os.path.exists(os.path.join(ROOT, f)))


def text_of(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".ipynb"):
        text = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
    if path.endswith(".py"):  # docstrings, strings and comments; not code (models.items() is a dict)
        tokens = tokenize.generate_tokens(io.StringIO(text).readline)
        text = "\n".join(t.string for t in tokens if t.type in (tokenize.STRING, tokenize.COMMENT))
    return text


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def path_exists(path: str) -> bool:
    return os.path.exists(os.path.join(ROOT, path))


@pytest.mark.parametrize("path", doc_files())
def test_every_named_module_class_function_and_file_exists(path):
    text = text_of(path)
    missing_names = sorted({n for n in DOTTED.findall(text) if not resolves(n.rstrip("."))})
    missing_paths = sorted({p for p in PATH.findall(text) if not path_exists(p)})
    assert not missing_names, f"{path} names what does not exist: {missing_names}"
    assert not missing_paths, f"{path} names files that do not exist: {missing_paths}"


def test_nothing_points_outside_the_repository():
    for path in doc_files():
        text = text_of(path)
        assert "DESIGN.md" not in text and "../shared" not in text, path


def test_the_checker_catches_a_missing_name():
    assert resolves("transforms.scoring.executor.score_chunk")
    assert not resolves("transforms.scoring.executor.score_graph_chunk")
    assert not resolves("transforms.graph_rows")
    assert path_exists("pipelines/local/demo.py") and not path_exists("pipelines/demo.py")
