"""Helpers of the hostile-input tests: run the CLI, assert a clean refusal, snapshot a folder tree."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from cdx.cli import main

CAPTION = "This man has beard of medium length. He is in his thirties."


def cli(*args, env: dict | None = None):
    """The real command line, in process (exceptions are not caught: a traceback fails the test)."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def assert_refused(r, *needles: str, code: int = 2) -> str:
    """Exit code 2, exactly one `error:` line on stderr naming `needles`, nothing on stdout, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == code, (r.exit_code, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and r.stdout == "", r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(root: Path, skip: tuple[str, ...] = ("cache",)) -> dict[str, str]:
    """Every path under `root` (hidden ones too) -> sha256 of its bytes, or 'dir'."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in skip:
            continue
        out[str(rel)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused_and_unchanged(root: Path, args, *needles: str, env: dict | None = None) -> str:
    """The command is refused in one line and leaves every file under `root` byte-identical (and adds none)."""
    before = snapshot(root)
    line = assert_refused(cli(*args, env=env), *needles)
    assert snapshot(root) == before
    return line


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, change) -> None:
    """Rewrite a JSON file through `change(obj) -> obj` (which may mutate and return obj)."""
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def flip_byte(path: Path, keep_mtime: bool = True) -> None:
    """Corrupt one byte in the middle, keeping the size (and, by default, the modification time)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        import os

        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
