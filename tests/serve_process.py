"""The `cdx serve` process of tests/test_serve.py and the processes below it (from /proc), so that the tests
can tell what it started and check that nothing of it is left after it stops."""
from __future__ import annotations

import ipaddress
import os
import re
import signal
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


def _processes(entry: str, text: str, skip_self: bool = False) -> set[int]:
    """Processes whose /proc/<pid>/<entry> holds `text`."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and not (skip_self and int(d.name) == os.getpid()):
            try:
                if text.encode() in (d / entry).read_bytes():
                    out.add(int(d.name))
            except OSError:
                pass
    return out


def with_dir(path: str) -> set[int]:
    """Processes whose command line names `path` (Ray's processes name their temp folder)."""
    return _processes("cmdline", path)


def with_env(text: str) -> set[int]:
    """Processes whose environment names `text` (RAY_TMPDIR=<the test's folder>): Ray's agents rename their
    command line (ray::DashboardAgent) but keep the environment they inherited from the server."""
    return _processes("environ", text, skip_self=True)


def ray_left(server: "Server") -> set[int]:
    """Live processes this server started (noted in its tree, or naming its temp folder in their command line
    or environment)."""
    return alive(server.pids | with_dir(server.tmp) | with_env(server.tmp)) - {os.getpid()}


def _proc_addr(hex_addr: str) -> tuple[str, int]:
    """'0100007F:1F90' (/proc/net/tcp) or its 32-hex-digit tcp6 form -> ('127.0.0.1', 8080)."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word in host order
    ip = ipaddress.ip_address(raw)
    mapped = getattr(ip, "ipv4_mapped", None)  # shown as ::ffff:127.0.0.1 (an IPv6 socket for IPv4 only)
    return (f"::ffff:{mapped}" if mapped else str(ip)), int(port, 16)


def listening_sockets(pids) -> list[tuple[int, str, str, int]]:
    """(pid, command line, address, port) of every TCP socket in LISTEN state that the processes `pids` hold,
    from /proc (their fds' socket inodes matched against /proc/<pid>/net/tcp and tcp6)."""
    inodes: dict[int, set[int]] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.setdefault(int(target[8:-1]), set()).add(pid)
        except OSError:  # exited meanwhile
            continue
    rows = []
    for pid in sorted(pids):  # one network namespace: the first process that is still there tells
        try:
            rows = [line.split() for table in ("tcp", "tcp6")
                    for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]]
            break
        except OSError:
            continue
    out = []
    for f in rows:
        if f[3] != "0A" or int(f[9]) not in inodes:  # 0A: TCP_LISTEN
            continue
        addr, port = _proc_addr(f[1])
        for owner in sorted(inodes[int(f[9])]):
            try:
                cmd = Path(f"/proc/{owner}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            out.append((owner, cmd.strip()[:120], addr, port))
    return out


def is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


class Server:
    """A `cdx serve` process and what the tests learn about it."""

    def __init__(self, port: int, args: list[str], preexec_fn=None):
        self.tmp = tempfile.mkdtemp(prefix="cdxray-", dir="/tmp")  # short: Ray's socket paths must fit
        env = dict(os.environ, RAY_TMPDIR=self.tmp, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        self.url = f"http://127.0.0.1:{port}/"
        self.proc = subprocess.Popen([sys.executable, "-m", "cdx", "serve", "--port", str(port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.pids: set[int] = set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

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

    def wait(self, timeout: float) -> int:
        """Its exit status, once it has exited and every line it printed is in `lines`."""
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code

    def note_pids(self):
        self.pids |= descendants(self.proc.pid)

    def stop(self, sig=signal.SIGINT, timeout: float = 120) -> None:
        """Stop it if it runs (KILL after `timeout`), then KILL whatever it left (only what it started)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for p in ray_left(self):
            os.kill(p, signal.SIGKILL)
