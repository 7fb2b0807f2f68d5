"""The README's "Use the transforms in your own pipeline" example (found on the README or, should
it move, on the docs/ page that has the section) is what the command runs:
executed as written (paths swapped for test files), on records with bad ones among them, it
gives the same rows and the same whole dead-letter rows as python -m pipelines.batch_infer."""

import glob
import os
import re

from models.serving.examples import make_example
from pipelines import batch_infer
from tests.helpers import read_jsonl
from tests.test_batch_infer import penguin_values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
HEADING = "## Use the transforms in your own pipeline\n"


def pipeline_page() -> str:
    """The README, or the one docs/ page holding the section."""
    pages = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    found = []
    for page in pages:
        with open(page, encoding="utf-8") as f:
            if "\n" + HEADING in f.read():
                found.append(page)
    assert len(found) == 1, found
    return found[0]


def readme_pipeline() -> str:
    with open(pipeline_page(), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("\n" + HEADING):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_pipeline_gives_what_the_command_gives(penguin_model, tmp_path, write_tfrecords):
    version_dir, _ = penguin_model
    values = penguin_values(40, seed=13)
    records = [make_example(v).SerializeToString() for v in values]
    records[3] = b"\x0a\xff not an example"
    records[17] = make_example({**values[17], "island": 9}).SerializeToString()  # out of the embedding
    records[25] = make_example({**values[25], "measurements": [1.0]}).SerializeToString()
    os.makedirs(tmp_path / "data")
    write_tfrecords("data/part-0.tfrecord.gz", records[:20], gzip=True)
    write_tfrecords("data/part-1.tfrecord.gz", records[20:], gzip=True, tail=b"\x07\x00")
    code = readme_pipeline()
    for placeholder in ("models/clf", "data/part-*.tfrecord.gz", "out/"):
        assert placeholder in code, placeholder
    code = (code.replace("models/clf", version_dir)
            .replace("data/part-*.tfrecord.gz", str(tmp_path / "data" / "part-*.tfrecord.gz"))
            .replace('"out/', f'"{tmp_path}/readme/'))
    exec(compile(code, pipeline_page(), "exec"), {})  # pylint: disable=exec-used

    command = str(tmp_path / "command" / "predictions")
    batch_infer.run(["--input", str(tmp_path / "data" / "part-*.tfrecord.gz"), "--model", f"clf={version_dir}",
                     "--key_feature", "id", "--output", command], save_main_session=False)

    def outputs(prefix):
        rows = sorted(read_jsonl(prefix + "-*.jsonl"), key=lambda r: r["key"])
        dead = sorted(read_jsonl(prefix + ".errors-*.jsonl"), key=lambda d: (d["stage"], d["key"]))
        return rows, dead

    rows, dead = outputs(str(tmp_path / "readme" / "predictions"))
    assert (rows, dead) == outputs(command)
    assert [(d["stage"], d["key"]) for d in dead] == [
        ("decode", "part-0.tfrecord.gz:3"), ("infer", values[17]["id"]), ("read", "part-1.tfrecord.gz:20"),
        ("validate", values[25]["id"])]
    assert len(rows) + len(dead) == len(records) + 1  # the broken tail is one more (read) dead letter
