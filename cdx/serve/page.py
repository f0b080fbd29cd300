"""What the page at / asks the server for besides images: the model's description (modalities, classes and
their colours, defaults, limits), label-map PNGs as class ids, and the shipped example masks."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from ..errors import InputError
from .options import ServeOptions
from .schema import DEFAULT_STEPS, decode_png, label_map_from_png, validation_line

PAGE_SIDE = 256  # the page paints on a 256 x 256 grid of class ids
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the repository's examples/ (editable install)


def model_payload(cfg, options: ServeOptions, backend: str) -> dict:
    """GET /v1/model."""
    from ..models.masks import CLASS_NAMES, PALETTE
    from ..models.modalities import kind_of

    return {
        "modalities": [{"name": m.name, "kind": m.kind, "input": kind_of(m.kind).describe, "guidance": m.guidance}
                       for m in cfg.modalities],
        "image_size": list(cfg.image_size),
        "defaults": {"steps": min(DEFAULT_STEPS, options.max_steps, cfg.timesteps), "sampler": "ddim",
                     "eta": cfg.eta, "seed": 0, "batch": 1, "shaping": cfg.shaping},
        "limits": {"max_steps": min(options.max_steps, cfg.timesteps), "max_batch": options.max_request_batch,
                   "max_body_bytes": options.max_body_bytes, "max_mask_side": options.max_mask_side,
                   "max_queued": options.max_queued},
        "batching": {"max_batch": options.max_batch, "batch_wait_ms": options.batch_wait_ms,
                     "max_items": options.max_items},
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(CLASS_NAMES, PALETTE))],
        "backend": backend,
    }


class LabelMapBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    mask: StrictStr
    side: StrictInt = PAGE_SIDE


def ids_payload(label: np.ndarray, side: int) -> dict:
    """(H, W) class ids -> {"side", "ids": base64 of side*side uint8, NEAREST-resized as the model's input is}."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(label, np.uint8))
    if im.size != (side, side):
        im = im.resize((side, side), Image.Resampling.NEAREST)
    return {"side": side, "ids": base64.b64encode(np.asarray(im, np.uint8).tobytes()).decode("ascii")}


def label_map_payload(raw: bytes, options: ServeOptions) -> dict:
    """POST /v1/label-map {"mask": base64 PNG, "side"}: the page's 'load a label map', read by the server's
    own mask reader so that the page accepts exactly what /v1/generate does."""
    try:
        body = LabelMapBody.model_validate_json(raw)
    except ValidationError as e:
        raise InputError(validation_line(e, LabelMapBody)) from None
    if not 16 <= body.side <= 1024:
        raise InputError(f"side {body.side}: out of range (16..1024)")
    label = label_map_from_png(decode_png(body.mask, "mask", options.max_mask_side))
    return ids_payload(label, body.side)


def examples_payload(folder: Path = EXAMPLES) -> list[dict]:
    """GET /v1/examples: the shipped example masks as class ids (none where examples/ is not beside cdx)."""
    from ..models.masks import load_label_map

    if not folder.is_dir():
        return []
    return [{"name": p.stem, **ids_payload(load_label_map(p), PAGE_SIDE)} for p in sorted(folder.glob("*.png"))]
