"""What the page at / asks the server for besides images: the model's description (modalities, classes and
their colours and readable names, defaults, limits, the backend without the server's paths), label-map PNGs
as class ids, and the shipped example masks with a caption that fits each."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from ..errors import InputError
from .options import ServeOptions
from .schema import DEFAULT_STEPS, decode_png, label_map_from_png, validation_line

PAGE_SIDE = 256  # the page paints on a 256 x 256 grid of class ids
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"  # the repository's examples/ (editable install)
# The palette's words for CelebAMask-HQ's class codes (the codes stay the API's and the tooltips' names)
LABELS = {"eye_g": "eyeglasses", "l_eye": "left eye", "r_eye": "right eye", "l_brow": "left brow",
          "r_brow": "right brow", "l_ear": "left ear", "r_ear": "right ear", "u_lip": "upper lip",
          "l_lip": "lower lip", "ear_r": "earring", "neck_l": "necklace", "cloth": "clothes"}
# A caption for each shipped example mask, in words the shipped model was trained on (its vocabulary), that
# says what the mask shows; the page starts from DEFAULT_EXAMPLE and its caption.
EXAMPLE_CAPTIONS = {
    "mask_long_hair": "This woman has long blond hair and wears a necklace.",
    "mask_hat_bangs": "This woman wears a hat and earrings. She has bangs.",
    "mask_short_hair_glasses": "This man has short black hair and wears eyeglasses. He is smiling.",
}
DEFAULT_EXAMPLE = "mask_long_hair"
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:[\\/]|~?/)\S*")  # /abs/path, ~/x, C:\x


def backend_label(description: str) -> str:
    """The backend line the page shows: its first part without the server's folders.
    'backend: onnxruntime (CPUExecutionProvider) on /home/u/.cache/cdx/onnx; auto: ...'
    -> 'onnxruntime (CPUExecutionProvider)'."""
    first = description.split(";")[0].strip()
    first = first[len("backend:"):].strip() if first.startswith("backend:") else first
    first = re.sub(r"\s+on\s+(?:[A-Za-z]:[\\/]|~?/).*$", "", first)  # ' on <folder>' ends ort's, openvino's line
    return " ".join(_PATH.sub("(a folder)", first).split())


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
        "classes": [{"id": i, "name": n, "label": LABELS.get(n, n), "color": list(c)}
                    for i, (n, c) in enumerate(zip(CLASS_NAMES, PALETTE))],
        "backend": backend,
        "backend_label": backend_label(backend),
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
    """GET /v1/examples: the shipped example masks as class ids, each with its caption (null for a mask
    without one) and whether the page starts from it (none where examples/ is not beside cdx)."""
    from ..models.masks import load_label_map

    if not folder.is_dir():
        return []
    return [{"name": p.stem, "caption": EXAMPLE_CAPTIONS.get(p.stem), "default": p.stem == DEFAULT_EXAMPLE,
             **ids_payload(load_label_map(p), PAGE_SIDE)} for p in sorted(folder.glob("*.png"))]
