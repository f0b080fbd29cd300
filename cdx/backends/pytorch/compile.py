"""The torch.compile backend ("torch-compile"): the torch runner's networks compiled by inductor, on the
CPU (C++/OpenMP kernels) or CUDA (Triton kernels, launched inside cdx's CUDA-graph loop).

Each network is compiled for the static shapes it is first called with (`dynamic=False`), once per
shape; the first call of a shape says on stderr that it is compiling.

Inductor keeps what it compiles on disk (FX graph and AOTAutograd caches, generated C++/Python kernels and
their .so files, Triton's cache) and loads it again in later processes. cdx hands it a folder of its own,
$CDX_CACHE/inductor/<key>/torch (the key: the model config, device, dtype, mode and torch version), and
checks it: after every compile cdx records the sha256 of every file there in `cdx-inductor.json` beside it;
before the next compile (the only time inductor reads its cache) every file must be the one recorded. A
changed, missing or unrecorded file, or an unreadable record, empties `torch/` (only that: what inductor
wrote at cdx's request) and compiles again, with a one-line notice. A folder at cdx's place without cdx's
record is not cdx's: it is left alone and this process compiles into a temporary folder of its own.
Processes sharing a folder take turns on its lock to check, compile into and record it.

The folder reaches inductor through TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR, which torch reads (and
writes back) at every compile: cdx sets them around each call of a compiled network and restores them
after, so the rest of the process keeps its own; compiled calls take turns within the process while they
are set. A TORCHINDUCTOR_CACHE_DIR the user set (other than torch's default) is theirs: used as it is,
unchecked. Inductor's precompiled C++ headers (CPU kernels), whose folder torch fixes under its default
cache folder when it is imported, are moved into the checked folder for cdx's calls the same way (about
150 MB a folder: without them a compile took three times as long on a 2-core CPU).

On CUDA the default mode is "max-autotune-no-cudagraphs": inductor autotunes its kernels but leaves the
CUDA graphs to `cuda_graph.py`, which captures the compiled networks as it captures the eager ones
(inductor's own graphs cannot be captured inside another capture).
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

from ...defaults import cache_dir
from ...integrity import tree_sha256
from ...io import TMP_TAG, atomic_write_text, read_json
from .eager import TorchRunner, named_outputs

CPU_MODE, CUDA_MODE = "default", "max-autotune-no-cudagraphs"
FORMAT, VERSION = "cdx-inductor", 1
RECORD, LOCK, TREE = "cdx-inductor.json", "cdx-inductor.lock", "torch"  # cdx's folder: its record, lock, inductor's
_CALLS = threading.RLock()  # held by a compiled call while the process environment names its folder


def user_cache() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR where the user chose it (torch writes its own default back into the
    environment at its first compile: that is no choice)."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return chosen or None
    return chosen if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()) else None


def cache_key(cfg, device: torch.device, dtype, mode: str, runner: str) -> str:
    ident = {"config": cfg.to_dict(), "device": device.type, "dtype": str(dtype), "mode": mode, "runner": runner,
             "torch": torch.__version__, "version": VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _skip(rel: str) -> bool:
    """Inductor's lock files: empty, rewritten by every compile, never loaded."""
    return rel == "locks" or rel.endswith(".lock")


def _compiles() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["total"]


def _record(path: Path) -> dict | None:
    """The record at `path` if it is a well-formed one of cdx's; None if it is unreadable."""
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return None
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION
          and isinstance(doc.get("files"), dict) and all(isinstance(v, str) for v in doc["files"].values()))
    return doc if ok else None


def _private_folder() -> Path:
    path = Path(tempfile.mkdtemp(prefix="cdx-inductor-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _empty(tree: Path) -> None:
    """Remove `tree`, inductor's part of cdx's folder (a link there is removed, never followed)."""
    if tree.is_symlink() or (tree.exists() and not tree.is_dir()):
        tree.unlink()
    elif tree.exists():
        shutil.rmtree(tree)


@contextlib.contextmanager
def _headers_in(tree: Path):
    """Inductor's precompiled C++ headers kept in `tree` for a call (torch fixes their folder, under its default
    cache folder whatever TORCHINDUCTOR_CACHE_DIR says, when it is imported); where they cannot be moved, a
    torch without that folder, they are switched off."""
    from torch._inductor import codecache, config

    if not (isinstance(getattr(codecache, "_HEADER_DIR", None), str) and hasattr(codecache, "_HEADER_LOCK_DIR")):
        with config.patch(cpp_cache_precompile_headers=False):
            yield
        return
    saved = codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR
    codecache._HEADER_DIR = str(tree / "precompiled_headers")
    codecache._HEADER_LOCK_DIR = str(tree / "precompiled_headers" / "locks")
    try:
        yield
    finally:
        codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR = saved


class InductorCache:
    """The folder inductor caches one runner's compiled networks in (`path`), with cdx's checks where the
    folder is cdx's own (`folder`: its record, its lock and `path`); see the module's docstring."""

    def __init__(self, key: str, label: dict, notice):
        self.label, self.notice, self.folder = label, notice, None
        if user_cache() is not None:
            self.path, self.env = Path(user_cache()), None  # the user's choice: used as they set it, unchecked
            return
        folder = Path(os.path.abspath(cache_dir() / "inductor" / key))  # torch makes its folder absolute too
        why = self._claim(folder)
        if why is None:
            self.folder, self.path = folder, folder / TREE
        else:
            notice(f"inductor cache: {folder} {why}; compiling into a temporary folder")
            self.path = _private_folder()
        self.env = {"TORCHINDUCTOR_CACHE_DIR": str(self.path), "TRITON_CACHE_DIR": str(self.path / "triton")}

    def _claim(self, folder: Path) -> str | None:
        """None where `folder` is cdx's (made here, with its record first, when there is nothing there), else
        why it is not used."""
        if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
            return "is not a folder cdx made; left alone"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            rec = folder / RECORD
            if rec.is_file() and not rec.is_symlink():
                return None
            if os.path.lexists(rec) or any(TMP_TAG not in p.name for p in folder.iterdir()):
                return "was not written by cdx; left alone"
            self._write({}, folder)  # an empty folder holds nothing to lose: cdx's from now on
        except OSError as e:
            return f"cannot be used ({e.strerror or e})"
        return None

    def _write(self, files: dict, folder: Path | None = None) -> None:
        doc = {"format": FORMAT, "version": VERSION, **self.label, "files": files}
        atomic_write_text((folder or self.folder) / RECORD, json.dumps(doc, sort_keys=True))

    def _recorded(self) -> None:
        """Record every file inductor keeps in `path` now (an unwritable cache: checked against the old record)."""
        files, _ = tree_sha256(self.path, _skip)
        with contextlib.suppress(OSError):
            self._write({k: v for k, v in files.items() if v is not None})

    def _damage(self) -> str | None:
        """What is wrong with `path` against the record (None: every file is the one recorded)."""
        doc = _record(self.folder / RECORD)
        if doc is None:
            return f"has an unreadable record ({RECORD})"
        if self.path.is_symlink() or (os.path.lexists(self.path) and not self.path.is_dir()):
            return f"has a {TREE} that is not a folder"
        files, odd = tree_sha256(self.path, _skip)
        want = doc["files"]
        bad = [(n, "is missing" if files.get(n) is None else "is damaged (not the bytes cdx recorded)")
               for n in sorted(want) if files.get(n) != want[n]]
        bad += [(n, "was not recorded by cdx") for n in sorted(set(files) - set(want))]
        bad += [(n, "is not a regular file") for n in odd]
        if not bad:
            return None
        more = f" (and {len(bad) - 1} other files)" if len(bad) > 1 else ""
        return f"{TREE}/{bad[0][0]} {bad[0][1]}{more}"

    def _check(self) -> None:
        """Every file in `path` is the one recorded, or `path` is emptied and its networks compiled again."""
        why = self._damage()
        if why is None:
            return
        try:
            _empty(self.path)
            self._write({})
        except OSError as e:
            self.notice(f"inductor cache: {self.folder.name}: {why}, and it cannot be emptied ({e.strerror or e}); "
                        "compiling into a temporary folder")
            self.folder, self.path = None, _private_folder()
            self.env = {"TORCHINDUCTOR_CACHE_DIR": str(self.path), "TRITON_CACHE_DIR": str(self.path / "triton")}
            os.environ.update(self.env)
            return
        self.notice(f"inductor cache: {self.folder.name}: {why}; compiling again")

    @contextlib.contextmanager
    def _locked(self):
        """The folder's lock: held while this process checks, compiles into and records it."""
        fd = None
        with contextlib.suppress(OSError):
            fd = os.open(self.folder / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    @contextlib.contextmanager
    def using(self, compiling: bool):
        """One call of a compiled network with inductor's caches in `path` (the environment restored after).
        A call expected to compile (`compiling`) checks the folder first and records it after, under its lock;
        any other call that compiled after all (a guard that failed) records it after."""
        if self.env is None:
            yield
            return
        with _CALLS:
            saved = {k: os.environ.get(k) for k in self.env}
            os.environ.update(self.env)
            try:
                with self._locked() if compiling and self.folder else contextlib.nullcontext():
                    if compiling and self.folder:
                        self._check()
                    before = _compiles()
                    with _headers_in(self.path):
                        yield
                    if compiling and self.folder:
                        self._recorded()
                if not compiling and self.folder and _compiles() != before:
                    with self._locked():
                        self._recorded()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


class CompiledRunner:
    """A TorchRunner (or its CUDA fast-path subclass) whose loop networks run through torch.compile.
    The encoders and the VAE run eagerly: they run once per request, compiling them would cost more."""

    backend = "torch-compile"

    def __init__(self, base: TorchRunner, mode: str | None = None, notice=None):
        self.base = base
        self.cfg, self.device, self.specs = base.cfg, base.device, base.specs
        self.dtype, self.streams = base.dtype, getattr(base, "streams", 1)
        self.mode = mode or (CUDA_MODE if self.device.type == "cuda" else CPU_MODE)
        self.notice = notice or (lambda msg: print(msg, file=sys.stderr, flush=True))
        key = cache_key(self.cfg, self.device, self.dtype, self.mode, type(base).__name__)
        label = {"config": self.cfg.to_dict(), "target": f"{self.device.type} {self.dtype} {self.mode}"}
        self.inductor = InductorCache(key, label, lambda msg: self.notice(msg))
        self.cache = str(self.inductor.path)
        self._compiled: dict[str, object] = {}
        self._seen: set[tuple] = set()

    def net_dtype(self, network: str) -> torch.dtype:
        return self.base.net_dtype(network)

    def module(self, network: str):
        if self.specs[network].kind not in ("unet", "diffuser"):
            return self.base.model.module(network)
        if network not in self._compiled:
            self._compiled[network] = torch.compile(self.base.model.module(network), mode=self.mode, dynamic=False)
        return self._compiled[network]

    def _args(self, network: str, inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
        """The network's arguments, and whether this is the first call of their shapes (a compile)."""
        dt = self.net_dtype(network)
        args = []
        for t in self.specs[network].inputs:
            v = inputs[t.name].to(self.device)
            args.append(v.to(dt) if v.is_floating_point() else v)
        key = (network, *(tuple(a.shape) for a in args))
        new = key not in self._seen and self.specs[network].kind in ("unet", "diffuser")
        if new:
            self._seen.add(key)
            self.notice(f"torch.compile: compiling {network} for {tuple(args[0].shape)} ({self.mode}; first use of "
                        f"this shape, cached in {self.cache})")
        return args, new

    def enqueue(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Launch the compiled network on the current stream (CUDA-graph capture); outputs in its dtype."""
        args, new = self._args(network, inputs)
        with torch.inference_mode(), self.inductor.using(compiling=new):
            return named_outputs(self.specs[network], self.module(network)(*args))

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.float().contiguous() for k, v in self.enqueue(network, inputs).items()}
