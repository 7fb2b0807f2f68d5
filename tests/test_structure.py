"""The architecture, checked from the source: accounting in one place, imports that never circle.

- A record leaves a stage as a dead letter or a prediction only through AccountedDoFn.reject /
  emit_predictions (transforms/runtime/accounting.py), which count what they emit: no other
  module tags dead letters or bumps those counters by hand.
- No import circle among the project's modules (imports inside functions and for type
  checking included); models/ imports neither transforms/ nor pipelines/ (it is what jobs and
  model preparation share), models/serving/ (what jobs need at run time) never imports
  models/preparation/, and transforms/graph/ (pure wiring) never imports transforms/scoring/.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("models", "transforms", "pipelines")
ACCOUNTING = "transforms/runtime/accounting.py"
HAND_ACCOUNTING = re.compile(r"TaggedOutput\(\s*DEAD_LETTER_TAG|_accounting\.(dead_letters|predictions)\(")


def project_files():
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, known: set) -> set:
    """The project modules a file imports, anywhere in it ('from a.b import c' counts a.b.c if it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(name for name in names if name in known)
    return found


def import_graph():
    files = {module_name(p): p for p in project_files()}
    known = set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return trail[trail.index(child):] + [child]
            if child not in state:
                cycle = visit(child, trail + [child])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_only_the_accounted_dofn_emits_dead_letters_and_predictions():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in project_files() if str(p.relative_to(ROOT)) != ACCOUNTING
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if HAND_ACCOUNTING.search(line)]
    assert offenders == [], "dead letters or predictions emitted by hand (use AccountedDoFn.reject / emit_predictions)"


def test_no_import_circle():
    assert find_cycle(import_graph()) is None


def imports_between(importers: str, imported: tuple) -> dict:
    """{module under `importers`: the modules it imports under any of `imported`}, where any."""
    found = {name: sorted(m for m in imports if m.startswith(imported))
             for name, imports in import_graph().items() if name == importers or name.startswith(importers + ".")}
    return {name: modules for name, modules in found.items() if modules}


@pytest.mark.parametrize("importers, imported", [
    ("models", ("transforms", "pipelines")),
    ("models.serving", ("models.preparation", "models.prepare", "models.inspect")),
    ("transforms.graph", ("transforms.scoring",)),
])
def test_packages_import_only_downwards(importers, imported):
    assert imports_between(importers, imported) == {}


@pytest.mark.parametrize("line", ["            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, row)",
                                  "        self._accounting.dead_letters([row])"])
def test_the_hand_accounting_check_can_fail(line):
    assert HAND_ACCOUNTING.search(line)


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_downward_import_check_can_fail():
    assert "pipelines.batch_infer" in imports_between("pipelines", ("transforms",))
