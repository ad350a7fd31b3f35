"""The code of the README and of docs/*.md runs as written, at Keras' default verbosity, as a
user would run it.

Python blocks (the README's, then each page of docs/ in reading order) run in order in one fresh
process (as pasted into a script or a notebook),
in an empty folder; a block that starts with a `# NAME.py` comment is a file the user saves,
and the `python -m pytest ...` block after it is run as shown. The quickstart also runs
twice on its own, in two fresh processes: it records, then verifies with the same digest.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

from tests.conftest import REPO, run_child

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
FILE_COMMENT = re.compile(r"^# (\w+\.py)\n")


DOCUMENTS = ("README.md", "docs/guide.md", "docs/fingerprints.md", "docs/file-format.md", "docs/guarantees.md", "docs/trace.md")
"""Every page whose code blocks run, in reading order (the docs continue the README's session)."""


def _blocks():
    blocks = []
    for document in DOCUMENTS:
        with open(os.path.join(REPO, document)) as handle:
            blocks += [(language, body) for language, body in BLOCK.findall(handle.read())]
    return blocks


@pytest.mark.unit
def test_the_readme_is_short_and_every_page_of_docs_is_run():
    """The README stays a page a first-time user reads to the end (at most 250 lines), and every
    page of docs/ is in DOCUMENTS, so its code blocks run."""
    with open(os.path.join(REPO, "README.md")) as handle:
        assert sum(1 for _ in handle) <= 250
    pages = {f"docs/{name}" for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")}
    assert pages == set(DOCUMENTS[1:])


def _run(args, folder, timeout=900):
    env = {"MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    return run_child(args, cwd=folder, env=env, timeout=timeout).stdout


@pytest.mark.unit
def test_readme_starts_with_the_two_commands():
    """The first block holds exactly the install-and-demo and install-and-test commands."""
    language, body = _blocks()[0]
    assert language == "bash"
    assert body.strip().splitlines() == [
        "pip install . && keras-repro demo",
        "pip install torch==2.13.0 -e '.[test,jax,torch]' && python tests/matrix.py",
    ]
    with open(os.path.join(REPO, ".ci", "run")) as handle:
        assert body.strip().splitlines()[1].replace(" && ", "\n").split("\n")[-1] in handle.read()


@pytest.mark.slow
def test_quickstart_records_then_verifies_in_fresh_processes(tmp_path):
    """The first Python block, run twice as written: record, then verify, one digest."""
    quickstart = next(body for language, body in _blocks() if language == "python")
    (tmp_path / "quickstart.py").write_text(quickstart)
    first = _run([sys.executable, "quickstart.py"], tmp_path).strip().splitlines()[-1]
    second = _run([sys.executable, "quickstart.py"], tmp_path).strip().splitlines()[-1]
    mode, digest = first.split()
    assert mode == "record" and len(digest) == 16
    assert second == f"verify {digest}"
    readme = open(os.path.join(REPO, "README.md")).read()
    # The digest itself depends on the CPU (float kernels differ by instruction set) and the
    # versions installed: the README shows one such pair, measured, and says so.
    assert re.search(r"^record ([0-9a-f]{16})\nverify \1$", readme, re.M), "the README shows a record/verify pair"


@pytest.mark.slow
def test_every_python_block_runs_as_written(tmp_path):
    """All Python blocks in order in one process, then each saved file's command as shown."""
    session, commands = [], []
    blocks = _blocks()
    for index, (language, body) in enumerate(blocks):
        named = FILE_COMMENT.match(body)
        if language == "python" and named:
            (tmp_path / named.group(1)).write_text(body)
            command = blocks[index + 1][1].strip()
            assert blocks[index + 1][0] == "bash" and named.group(1) in command, "a saved file is followed by its command"
            commands.append(command)
        elif language == "python":
            session.append(body)
    (tmp_path / "readme.py").write_text("\n".join(session))
    out = _run([sys.executable, "readme.py"], tmp_path)
    assert "record " in out and "extend " in out, out[-2000:]  # the quickstart, then its continuation
    for command in commands:
        assert command.startswith("python -m pytest")
        _run([sys.executable, *command.split()[1:]], tmp_path)
