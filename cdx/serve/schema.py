"""The HTTP API's JSON: the body of POST /v1/generate, checked by pydantic for shape and type and by
`cdx.sampling.request.make_request` for values (the one validation the Python API uses), and the reply.
Every failure here is a `cdx.InputError` with one line, which the ingress answers with a 4xx."""
from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import tempfile
import threading
import warnings
from typing import Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from ..errors import CdxWarning, InputError
from .options import ServeOptions

Number = Union[StrictInt, StrictFloat]
DEFAULT_STEPS = 50


class GenerateBody(BaseModel):
    """POST /v1/generate. Unknown fields and wrong types are refused (strict: "10" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Optional[StrictStr] = None  # a caption
    mask: Optional[StrictStr] = None  # base64 PNG label map (class ids 0..18, or palette colours)
    seed: StrictInt = 0  # item i of the request uses seed + i
    steps: Optional[StrictInt] = None  # None: DEFAULT_STEPS, or the server's limit if that is lower
    batch: StrictInt = 1
    sampler: StrictStr = "ddim"
    spacing: StrictStr = "uniform"
    guidance: Optional[dict[StrictStr, Number]] = None  # {modality: classifier-free guidance scale}
    eta: Optional[Number] = None
    fast: StrictBool = False  # the fast recipe (cdx.sampling.settings.FAST): replaces sampler, steps, spacing
    return_influence: StrictBool = False


def parse_body(raw: bytes) -> GenerateBody:
    try:
        return GenerateBody.model_validate_json(raw)
    except ValidationError as e:
        raise InputError(validation_line(e, GenerateBody)) from None


def validation_line(e: ValidationError, model: type[BaseModel]) -> str:
    """pydantic's first error as one line: 'steps: Input should be a valid integer (and 1 more error)'."""
    errs = e.errors(include_url=False)
    first = errs[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    if first.get("type") == "json_invalid":
        msg = f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
    elif first.get("type") == "extra_forbidden":
        msg = f"unknown field {where!r}; the fields are {', '.join(model.model_fields)}"
    elif first.get("type") == "model_type":
        msg = "the body must be a JSON object"
    else:
        msg = f"{where}: {first['msg']}" if where else first["msg"]
    more = len(errs) - 1
    return msg + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def decode_png(data: str, what: str, max_side: int) -> bytes:
    """Base64 text (a data: URL prefix is allowed) -> PNG bytes whose header says at most max_side a side."""
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        png = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64") from None
    if len(png) >= 24 and png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR":
        w, h = struct.unpack(">II", png[16:24])
        if w > max_side or h > max_side:
            raise InputError(f"{what}: a {w}x{h} PNG; this server takes masks up to {max_side} pixels a side")
    return png


def label_map_from_png(png: bytes, what: str = "mask") -> np.ndarray:
    """PNG bytes -> (H, W) uint8 class ids, through `cdx.models.masks.load_label_map`, the same reader (and
    the same checks: signature, truncation, CRCs, ids 0..18, palette colours) as a mask file."""
    from ..models.masks import load_label_map

    fd, path = tempfile.mkstemp(suffix=".png", prefix="cdx-serve-mask-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(png)
        return load_label_map(path)
    except InputError as e:  # the message starts with the temporary file's path: name the field instead
        raise InputError(str(e).replace(path, what)) from None
    finally:
        os.unlink(path)


def request_kwargs(body: GenerateBody, cfg, options: ServeOptions) -> tuple[dict, dict | None]:
    """make_request's keyword arguments and the guidance (None: the model's) of a parsed body, with this
    server's limits checked first."""
    from ..sampling.request import check_guidance
    from ..validate import check_int

    if body.text is None and body.mask is None:
        raise InputError("give at least one condition: text (a caption) or mask (a base64 PNG label map)")
    if body.text is not None and len(body.text) > options.max_text_chars:
        raise InputError(f"text: {len(body.text)} characters; this server takes captions of up to "
                         f"{options.max_text_chars} (the text encoder reads only its first tokens)")
    most = min(options.max_steps, cfg.timesteps)
    steps = check_int(body.steps, "steps", 1, most) if body.steps is not None else min(DEFAULT_STEPS, most)
    check_int(body.batch, "batch", 1, options.max_request_batch)
    mask = None
    if body.mask is not None:
        mask = label_map_from_png(decode_png(body.mask, "mask", options.max_mask_side))
    guidance = check_guidance(cfg, body.guidance)
    own = {m.name: m.guidance for m in cfg.modalities}
    guidance = {n: s for n, s in (guidance or {}).items() if own[n] != s} or None  # the model's own: no change
    kwargs = dict(text=body.text, mask=mask, seed=body.seed, steps=steps, batch=body.batch, sampler=body.sampler,
                  spacing=body.spacing, eta=body.eta, fast=body.fast, return_influence=body.return_influence)
    return kwargs, guidance


_CATCHING = threading.Lock()  # warnings.catch_warnings swaps process-wide state: one request at a time


def prepare(body: GenerateBody, cfg, options: ServeOptions) -> tuple:
    """(Request, guidance, warnings) of a parsed body: `request_kwargs` and `make_request`, and the cdx
    warnings they gave (a caption word the model never saw, a truncated or empty caption: what `cdx run`
    prints on stderr) as one line each, for the reply's "warnings"."""
    from ..sampling.request import make_request

    with _CATCHING, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CdxWarning)
        kwargs, guidance = request_kwargs(body, cfg, options)
        req = make_request(cfg, **kwargs)
    said = []
    for w in caught:
        if issubclass(w.category, CdxWarning):
            said.append(" ".join(str(w.message).split()))
        else:  # another thread's, or not cdx's: shown as it would have been
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return req, guidance, list(dict.fromkeys(said))


def http_inputs(options: ServeOptions) -> dict[str, str]:
    """What /v1/generate takes for each modality kind, in the HTTP API's words (GET /v1/model)."""
    return {"text": f"text: a caption, a JSON string of at most {options.max_text_chars} characters (the text "
                    "encoder reads only its first tokens)",
            "mask": f"mask: a base64 PNG label map (a data: URL prefix is allowed), at most "
                    f"{options.max_mask_side} pixels a side: palette or greyscale pixels = class ids 0..18, or "
                    "RGB in the palette's colours"}


def png_base64(array: np.ndarray) -> str:
    """(H, W, 3) or (H, W) uint8 -> base64 PNG text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
