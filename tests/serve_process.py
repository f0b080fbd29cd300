"""The `cdx serve` process of tests/test_serve.py and the processes below it (from /proc), so that the tests
can tell what it started and check that nothing of it is left after it stops."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: Ray's raylet, GCS, workers and the replicas)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pids) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in state(p)}


def state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]).lower()
    except (OSError, IndexError):
        return "zombie"


def with_dir(path: str) -> set[int]:
    """Processes whose command line names `path` (Ray's processes name their temp folder)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if path.encode() in (d / "cmdline").read_bytes():
                    out.add(int(d.name))
            except OSError:
                pass
    return out


class Server:
    """A `cdx serve` process and what the tests learn about it."""

    def __init__(self, port: int, args: list[str]):
        self.tmp = tempfile.mkdtemp(prefix="cdxray-", dir="/tmp")  # short: Ray's socket paths must fit
        env = dict(os.environ, RAY_TMPDIR=self.tmp, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen([sys.executable, "-m", "cdx", "serve", "--port", str(port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.pids: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                pytest.fail(f"cdx serve exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.5)
        pytest.fail(f"cdx serve printed no {pattern!r} in {timeout:.0f} s:\n{self.log()}")

    def note_pids(self):
        self.pids |= descendants(self.proc.pid)
