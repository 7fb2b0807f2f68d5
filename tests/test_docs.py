"""The docs name only what exists: every module, class and function that the README, every page
under docs/, bench/README.md, docker/README.md, the notebooks and the code's own docstrings and
comments name (`transforms.scoring.executor.score_chunk`, `pipelines/local/demo.py`) is there;
every relative link of the Markdown pages leads to a file of the repository (and to a heading of
it, when it names one); and nothing points outside the repository."""

import glob
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


def markdown_pages():
    """README.md, every page under docs/ (however deep), bench/README.md and docker/README.md."""
    pages = ["README.md", "bench/README.md", "docker/README.md"]
    pages += [os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)]
    return sorted(p for p in set(pages) if os.path.exists(os.path.join(ROOT, p)))


def doc_files():
    files = markdown_pages() + ["Makefile"]
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
    names = {n.rstrip(".") for n in DOTTED.findall(text)}
    pages = {n for n in names if n.endswith(".md")}  # models.md: a page beside this one, not a module
    missing_names = sorted(n for n in names - pages if not resolves(n))
    missing_names += sorted(n for n in pages if not path_exists(os.path.join(os.path.dirname(path), n)))
    missing_paths = sorted({p for p in PATH.findall(text) if not path_exists(p)})
    assert not missing_names, f"{path} names what does not exist: {missing_names}"
    assert not missing_paths, f"{path} names files that do not exist: {missing_paths}"


def test_nothing_points_outside_the_repository():
    for path in doc_files():
        text = text_of(path)
        assert "DESIGN.md" not in text and "../shared" not in text, path


FENCED = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """Markdown without its code (fenced blocks and inline code), where a link is a link."""
    return INLINE_CODE.sub("", FENCED.sub("", text))


def anchors(text: str) -> set:
    """The anchors GitHub gives a page's headings: the heading's text (code and links as their
    text) lower-cased, without punctuation but - and _, spaces as '-'; repeats get -1, -2, ..."""
    seen, result = {}, set()
    for heading in HEADING.findall(FENCED.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: str):
    """(target, anchor) of each relative link of a Markdown page; web and mail links left out."""
    for _, target in LINK.findall(prose(text_of(path))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        yield file_part, anchor


@pytest.mark.parametrize("path", markdown_pages())
def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository(path):
    problems = []
    for file_part, anchor in relative_links(path):
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), file_part)) if file_part else \
            os.path.join(ROOT, path)
        shown = f"{file_part}#{anchor}" if anchor else file_part
        if os.path.relpath(resolved, ROOT).startswith(".."):
            problems.append(f"{shown}: outside the repository")
        elif not os.path.exists(resolved):
            problems.append(f"{shown}: no such file")
        elif anchor and resolved.endswith(".md"):
            with open(resolved, encoding="utf-8") as f:
                if anchor not in anchors(f.read()):
                    problems.append(f"{shown}: no such heading")
    assert not problems, f"{path} links to what is not there: {problems}"


def test_the_readme_and_every_docs_page_are_checked():
    pages = markdown_pages()
    assert {"README.md", "bench/README.md", "docs/ARCHITECTURE.md", "docs/options.md", "docs/sources.md",
            "docs/sinks.md", "docs/streams.md", "docs/dataflow.md", "docs/models.md"} <= set(pages), pages
    assert set(pages) <= set(doc_files())
    every_docs_page = {os.path.relpath(f, ROOT) for f in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                   recursive=True)}
    assert every_docs_page <= set(pages)
    assert len(list(relative_links("README.md"))) >= 10  # the README leads into docs/


def test_the_link_checker_catches_a_broken_link(tmp_path):
    page = "## Sources (`transforms/sources/`)\n\n## Model graphs (`transforms/graph/`, pure)\n\n## Local runs\n"
    assert anchors(page) == {"sources-transformssources", "model-graphs-transformsgraph-pure", "local-runs"}
    assert anchors("## A\n\n## A\n") == {"a", "a-1"}
    text = "[a](docs/options.md) [b](https://example.com/x.md) `[c](nowhere.md)` [d](../outside.md#x)"
    links = [target for _, target in LINK.findall(prose(text))]
    assert links == ["docs/options.md", "https://example.com/x.md", "../outside.md#x"]


def test_the_checker_catches_a_missing_name():
    assert resolves("transforms.scoring.executor.score_chunk")
    assert not resolves("transforms.scoring.executor.score_graph_chunk")
    assert not resolves("transforms.graph_rows")
    assert path_exists("pipelines/local/demo.py") and not path_exists("pipelines/demo.py")
