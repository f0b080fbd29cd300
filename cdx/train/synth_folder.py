"""`cdx data synth`: synthetic faces written as a plain-layout training folder (sources.py's `_folder`):
images/<name>.png, masks/<name>.png (palette label maps, class ids 0..18) and captions.json.

Sample i is `cdx.synth.generate((seed, i), size)`: the face `cdx train` draws as sample i without --data for
--data-seed seed. The folder is written into a temporary folder beside it (claimed as cdx.io's atomic writes
claim theirs, so a killed run's leftovers are removed by the next write there) and renamed into place when
complete: an interrupted run leaves no half data set.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Callable

from ..errors import InputError

MAX_FACES = 10_000_000
SIZES = (16, 1024)


def check_target(folder: Path) -> None:
    """Refuse, before any work, a target that is not a new or empty folder, or whose parent cannot be written."""
    from ..io import probe_writable

    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InputError(f"{folder}: exists and is not a folder; give a new folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"{folder}: exists and is not empty; give a new or empty folder (nothing was replaced)")
    parent = folder.parent
    if not parent.is_dir():
        raise InputError(f"{folder}: folder {parent} does not exist")
    probe_writable(parent, str(folder))


def write_synthetic_folder(folder: str | os.PathLike, n: int, seed: int = 1234, size: int = 64,
                           progress: Callable[[int, int], None] | None = None) -> Path:
    """Write `n` synthetic faces as a plain-layout training folder at `folder` (new or empty), atomically."""
    from PIL import Image

    from ..io import _claim, remove_stale
    from ..models.masks import label_map_image
    from ..synth import generate
    from ..validate import check_int, check_seed

    check_int(n, "--n", 1, MAX_FACES)
    check_int(size, "--size", *SIZES)
    check_seed(seed, "--seed")
    folder = Path(folder)
    check_target(folder)
    remove_stale(folder.parent)
    width = max(5, len(str(n - 1)))
    with _claim(folder.parent, folder.name) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        captions = {}
        for i in range(n):
            name = f"{i:0{width}d}"
            s = generate((seed, i), size)
            Image.fromarray(s.image).save(tmp / "images" / f"{name}.png", format="PNG")
            label_map_image(s.label).save(tmp / "masks" / f"{name}.png", format="PNG")
            captions[name] = s.caption
            if progress is not None:
                progress(i + 1, n)
        (tmp / "captions.json").write_text(json.dumps(captions, indent=1))
        try:
            os.rename(tmp, folder)  # onto nothing or an empty folder, atomically
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise InputError(f"{folder}: something was written there meanwhile; nothing was replaced") from None
            raise
    return folder
