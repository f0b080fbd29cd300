"""Every ```python and ```bash block of README.md and docs/*.md runs as written from a fresh clone's root after
the Quickstart, or says why not with a marker on the line before it:

    <!-- docs-test: skip (the reason: a GPU, TensorRT, a running server, hours of training, a file not shipped) -->

Blocks of a document whose owner keeps such markers out of it are named in SKIP_LIST instead, with the
reason. The blocks run in one temporary folder standing for the clone (its examples/ copied, `.venv` this
interpreter's environment), README first and then docs/*.md in name order, each file's blocks in order, so a
later block may use what an earlier one wrote (face.png from the Quickstart, faces/ from `cdx data synth`).
HOME and CDX_CACHE are fresh folders. The Quickstart's install commands (venv, pip) are not run: this
checkout's environment is the one they make (`.ci/run` runs them in a real fresh clone).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
RUN_LANGS = ("python", "bash")
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
# commands of a bash block that make the environment this test already runs in
INSTALL = re.compile(r"^(python3? -m venv |(\.venv/bin/)?pip install )")
TIMEOUT_S = 600
# blocks of documents whose owner keeps markers out of them, by (document, the block's first line's start):
# the reason each is not run
SKIP_LIST = {
    ("docs/serving.md", 'pip install -e ".[serve]"'): "cdx serve runs until interrupted, with .[serve] installed; "
                                                       "tests/test_serve.py starts one",
    ("docs/serving.md", "curl -s localhost:8000/v1/generate"): "needs a running cdx serve; tests/test_serve.py sends "
                                                               "these requests",
}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = SKIP.match(before)
        first = lines[i + 1] if i + 1 < end else ""
        listed = next((why for (d, start), why in SKIP_LIST.items() if d == doc and first.startswith(start)), None)
        out.append(Block(doc, i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n",
                         marker.group(1) if marker else listed))
        i = end + 1
    return out


BLOCKS = [b for doc in DOCS for b in doc_blocks(doc) if b.lang in RUN_LANGS]


def runnable_bash(code: str) -> str:
    """The block with its continuation lines joined and its install commands (INSTALL) left out of `&&` chains."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    lines = []
    for line in joined.splitlines():
        parts = [p for p in line.split(" && ") if not INSTALL.match(p.strip())]
        if parts:
            lines.append(" && ".join(parts))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """(the clone's root, the environment the blocks run in)."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(ROOT / "examples", root / "examples")
    if sys.prefix != sys.base_prefix:  # the Quickstart's .venv: this interpreter's virtual environment
        (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    home = root.parent / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CDX_CACHE": str(root.parent / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("XDG_CACHE_HOME", None)
    return root, env


def test_every_block_is_run_or_says_why_not():
    assert BLOCKS, "no code blocks found"
    listed = {(b.doc, start) for b in BLOCKS for (d, start) in SKIP_LIST if d == b.doc and b.code.startswith(start)}
    assert listed == set(SKIP_LIST), f"skip-list entries that match no block: {set(SKIP_LIST) - listed}"
    for b in BLOCKS:
        assert b.skip is None or len(b.skip) > 10, f"{b.id}: a skip marker needs its reason"
    # the blocks a CPU runs include the Quickstart's command and the Python API's example
    run = [b for b in BLOCKS if b.skip is None]
    assert any("cdx run" in b.code for b in run if b.doc == "README.md")
    assert any(b.lang == "python" for b in run if b.doc == "README.md")


def test_install_commands_are_left_out():
    code = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/cdx run --text \\\n  T --out f.png\n"
    assert runnable_bash(code) == ".venv/bin/cdx run --text T --out f.png\n"


def _param(b: Block):
    # generating with the shipped model exports it and compiles it first (a fresh clone's first use): slow
    slow = b.skip is None and ("cdx run" in b.code or "Pipeline.load" in b.code)
    return pytest.param(b, id=b.id, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_block_runs(block, clone):
    if block.skip:
        pytest.skip(f"{block.id}: {block.skip}")
    root, env = clone
    if block.lang == "python":
        cmd = [sys.executable, "-c", block.code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", runnable_bash(block.code)]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, f"{block.id} failed ({r.returncode}):\n{block.code}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
