"""Collaborative editing of a real image (the paper's Algorithm 3, Imagic-style), any set of modalities.

For every modality m with a target condition:
  (a) optimise its condition embedding e_m (init: the target's encoding) so that the frozen
      collaborator reconstructs the image: min_e E_{t, eps} || eps - eps_m(z_t, t, e) ||^2;
  (b) fine-tune the collaborator on the image with e_m fixed (same loss);
  (c) interpolate c_m = alpha * target + (1 - alpha) * e_m.
Then sample collaboratively with the fine-tuned collaborators, the interpolated conditions and the
unchanged dynamic diffusers. The state after (a) and (b) is saved and reused for other alphas and seeds.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..models.schedule import alphas_cumprod, linear_betas
from ..errors import InputError
from ..integrity import file_sha256, verified_sha256
from ..io import atomic_folder
from ..models.bundle import is_sha256, save_tensors
from ..models.collab import CollaborativeModel
from ..validate import MAX_PIXELS  # an --image larger than this is refused before it is decoded

STATE_FORMAT = "cdx-edit-state"


@dataclass
class EditConfig:
    # `cdx edit`'s defaults, measured on the shipped model (README, Editing): a larger embedding step moves
    # the optimised embedding away from the target's, and a short fine-tuning keeps the face without
    # binding the target caption to it (200 fine-tuning steps reproduced the input at every alpha).
    embed_steps: int = 100  # (a) optimisation steps of the condition embedding
    embed_lr: float = 1e-2
    finetune_steps: int = 10  # (b) fine-tuning steps of each collaborator
    finetune_lr: float = 1e-4
    batch: int = 4  # timesteps drawn per optimisation step
    seed: int = 0


def load_image(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """RGB-decodable image -> (1, 3, H, W) in [-1, 1], centre-cropped to a square and resized (BICUBIC)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--image {p}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:  # decided from the header, before decoding
                    raise InputError(f"--image {p}: {im.size[0]}x{im.size[1]} is too many pixels (at most "
                                     f"{MAX_PIXELS // 10**6} megapixels)")
                im.load()
                rgb = im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"--image {p}: too many pixels to decode safely (at most {MAX_PIXELS // 10**6} "
                         "megapixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"--image {p}: not a decodable RGB image ({e.__class__.__name__})") from None
    w, h = rgb.size
    if min(w, h) < 32:
        raise InputError(f"--image {p}: {w}x{h} is too small (at least 32x32)")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    rgb = rgb.crop((left, top, left + side, top + side)).resize((size[1], size[0]), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0)
    return x.permute(2, 0, 1)[None]  # (H, W, 3) -> (1, 3, H, W)


def _acp(model: CollaborativeModel) -> torch.Tensor:
    cfg = model.cfg
    return torch.from_numpy(alphas_cumprod(linear_betas(cfg.timesteps, cfg.linear_start, cfg.linear_end))).float()


def reconstruction_loss(unet, z0: torch.Tensor, context: torch.Tensor, acp: torch.Tensor, gen: torch.Generator,
                        batch: int) -> torch.Tensor:
    """The paper's Eq. 3 on one image: || eps - eps_theta(sqrt(a) z0 + sqrt(1-a) eps, t, c) ||^2."""
    t = torch.randint(0, acp.shape[0], (batch,), generator=gen)
    eps = torch.randn((batch, *z0.shape[1:]), generator=gen)
    a = acp[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0.expand(batch, -1, -1, -1) + (1 - a).sqrt() * eps
    return torch.mean((unet(z_t, t, context.expand(batch, -1, -1)) - eps) ** 2)


def _descend(params, loss_fn: Callable[[], torch.Tensor], steps: int, lr: float, progress=None) -> None:
    """Adam on `params` for `steps` steps of `loss_fn`."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress(float(loss.detach()))


def optimise_embedding(unet, z0, target, acp, cfg: EditConfig, gen, progress=None) -> torch.Tensor:
    """Step (a): the frozen collaborator, a trainable copy of the target embedding."""
    unet.requires_grad_(False)
    e = target.detach().clone().requires_grad_(True)
    _descend([e], lambda: reconstruction_loss(unet, z0, e, acp, gen, cfg.batch), cfg.embed_steps, cfg.embed_lr,
             progress)
    return e.detach()


def finetune(unet, z0, embedding, acp, cfg: EditConfig, gen, progress=None):
    """Step (b): the collaborator's weights, the optimised embedding fixed."""
    unet.requires_grad_(True)
    _descend(list(unet.parameters()), lambda: reconstruction_loss(unet, z0, embedding, acp, gen, cfg.batch),
             cfg.finetune_steps, cfg.finetune_lr, progress)
    unet.requires_grad_(False)
    return unet.eval()


@dataclass
class EditState:
    """What steps (a) and (b) produce, per modality: target and optimised embeddings, fine-tuned UNet."""

    names: list[str]
    targets: dict[str, torch.Tensor]  # (1, L, D) each
    optimised: dict[str, torch.Tensor]
    unets: dict[str, dict[str, torch.Tensor]]  # fine-tuned state dicts
    meta: dict

    def contexts(self, alpha: float) -> list[torch.Tensor]:
        """Step (c): alpha * target + (1 - alpha) * optimised, in modality order."""
        return [alpha * self.targets[n] + (1 - alpha) * self.optimised[n] for n in self.names]

    def apply(self, model: CollaborativeModel) -> CollaborativeModel:
        """A copy of `model` with the fine-tuned collaborators in place."""
        edited = copy.deepcopy(model)
        for n, state in self.unets.items():
            edited.unets[n].load_state_dict(state)
        return edited.eval()


def run_edit(model: CollaborativeModel, image: torch.Tensor, targets: dict[str, torch.Tensor], cfg: EditConfig,
             progress: Callable[[str, float], None] | None = None) -> EditState:
    """Steps (a) and (b) for every modality in `targets` (contexts from the model's own encoders)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    acp = _acp(model)
    with torch.no_grad():
        z0 = model.module("vae_encoder")(image)  # scaled posterior mean (1, C, h, w)
    optimised, unets = {}, {}
    names = [m.name for m in model.cfg.modalities if m.name in targets]
    for n in names:
        unet = copy.deepcopy(model.unets[n]).train()

        def report(stage, n=n):
            return None if progress is None else (lambda loss: progress(f"{n}:{stage}", loss))

        optimised[n] = optimise_embedding(unet, z0, targets[n], acp, cfg, gen, report("embed"))
        unets[n] = {k: v.detach().clone() for k, v in finetune(unet, z0, optimised[n], acp, cfg, gen,
                                                                 report("finetune")).state_dict().items()}
    meta = {"format": STATE_FORMAT, "config": asdict(cfg), "names": names}
    return EditState(names, {n: targets[n].detach() for n in names}, optimised, unets, meta)


def save_state(state: EditState, folder: str | os.PathLike, extra: dict, overwrite: bool = False) -> None:
    """Write the edit state into `folder`, atomically (cdx.io.atomic_folder: an existing `folder` is replaced
    only when it is a cdx edit state and `overwrite` is set), with every file's sha256 in edit.json."""
    with atomic_folder(folder, STATE_FORMAT, overwrite=overwrite, what="--save-state") as tmp:
        emb = {f"target.{n}": state.targets[n].contiguous() for n in state.names}
        emb.update({f"optimised.{n}": state.optimised[n].contiguous() for n in state.names})
        save_tensors(emb, tmp / "embeddings.safetensors")
        for n, sd in state.unets.items():
            save_tensors({k: v.contiguous() for k, v in sd.items()}, tmp / f"{n}_unet.safetensors")
        files = {f.name: file_sha256(f) for f in sorted(tmp.glob("*.safetensors"))}
        (tmp / "edit.json").write_text(json.dumps({**state.meta, **extra, "files": files}, indent=1))


def load_state(folder: str | os.PathLike, model: CollaborativeModel | None = None) -> EditState:
    """A saved edit state, checked: its schema, every file's sha256, the tensor names, and, given the
    `model` it is for, every shape; all values finite. Anything else is one line naming the folder."""
    folder = Path(folder)
    rebuild = "re-create it with `cdx edit ... --save-state DIR`"

    def bad(why):
        return InputError(f"--load-state {folder}: {why}; {rebuild}")

    mpath = folder / "edit.json"
    if not folder.is_dir() or not mpath.is_file():
        raise bad("not a cdx edit state (no edit.json)")
    try:
        meta = json.loads(mpath.read_bytes())
    except (ValueError, RecursionError, OSError) as e:
        raise bad(f"unreadable edit.json ({type(e).__name__})") from None
    names = meta.get("names") if isinstance(meta, dict) else None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise bad("edit.json is not a cdx edit state manifest")
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        raise bad("edit.json: malformed names")
    want = ["embeddings.safetensors", *(f"{n}_unet.safetensors" for n in names)]
    if not isinstance(files, dict) or sorted(files) != sorted(want) or not all(is_sha256(v) for v in files.values()):
        raise bad("edit.json: malformed files")
    got = verified_sha256(folder, want)
    broken = [f for f in want if got[f] != files[f]]
    if broken:
        raise bad(f"{broken[0]} is missing, truncated or modified")
    try:
        emb = load_file(str(folder / "embeddings.safetensors"))
        unets = {n: load_file(str(folder / f"{n}_unet.safetensors")) for n in names}
    except (SafetensorError, OSError) as e:
        raise bad(f"unreadable safetensors ({type(e).__name__})") from None
    if set(emb) != {f"{kind}.{n}" for n in names for kind in ("target", "optimised")}:
        raise bad("embeddings.safetensors holds other tensors than its names say")
    targets = {n: emb[f"target.{n}"] for n in names}
    optimised = {n: emb[f"optimised.{n}"] for n in names}
    _check_tensors(targets, optimised, unets, model, bad)
    return EditState(names, targets, optimised, unets, meta)


def _check_tensors(targets, optimised, unets, model, bad) -> None:
    from ..models.modalities import kind_of

    for n in targets:
        t, o = targets[n], optimised[n]
        if not (t.is_floating_point() and o.is_floating_point() and t.shape == o.shape and t.dim() == 3
                and t.shape[0] == 1):
            raise bad(f"the {n} embeddings have shapes {tuple(t.shape)} and {tuple(o.shape)}, not (1, L, D)")
        tensors = {"target": t, "optimised": o, **{f"unet {k}": v for k, v in unets[n].items()}}
        nonfinite = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()),
                         None)
        if nonfinite:
            raise bad(f"the {n} {nonfinite} holds NaN or infinite values")
        if model is None:
            continue
        try:
            m = model.cfg.modality(n)
        except KeyError:
            raise bad(f"made for a modality {n!r} this model does not have") from None
        if tuple(t.shape) != (1, kind_of(m.kind).context_len(m), m.context_dim):
            raise bad(f"the {n} embeddings have shape {tuple(t.shape)}, not this model's")
        ref = model.unets[n].state_dict()
        if set(ref) != set(unets[n]) or any(ref[k].shape != v.shape for k, v in unets[n].items()):
            raise bad(f"the fine-tuned {n} UNet does not match this model's (other keys or shapes)")
