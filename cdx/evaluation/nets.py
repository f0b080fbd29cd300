"""The three small evaluation networks (stand-ins for the paper's Inception, face parser and attribute classifier).

All take 64x64 RGB faces (uint8 images are mapped to [-1, 1]; other sizes are resized to 64x64 first):

* :class:`FaceParser` predicts the 19 CelebAMask-HQ classes at **32x32**, the resolution of the diffusion
  model's mask condition (the 64x64 label map NEAREST-resized exactly as ``cdx.models.masks.label_map_to_ids``).
  Mask consistency is its pixel accuracy against that 32x32 map.
* :class:`AttributeClassifier` has one head per *visible* text attribute (:data:`CLASSIFIER_ATTRS`: hair colour,
  skin, beard, age, lipstick; gender only changes the caption's pronouns, so it is not in the image).
* FD features (:meth:`EvalNets.features`, 224-d): the classifier's penultimate layer (128-d, colours and
  textures) concatenated with the parser's globally averaged bottleneck (96-d, layout); so FD sees both what
  the text controls and what the mask controls.

Age is the weak attribute: twenties and thirties differ only by two faint 1-2 pixel folds beside the nose (often
under a beard), which these small networks do not learn to see; forties and fifties (greying, forehead lines,
crow's feet) they do. ``eval_nets.json`` has the per-attribute held-out accuracies, and ``cdx eval`` reports the
scores of the real test faces as the ceiling a method can reach.

Weights ship in ``cdx/data/eval_nets`` (made by ``python -m cdx.evaluation.train_nets``), with ``eval_nets.json``
recording the architecture, the training seeds and the held-out accuracies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import PACKAGE_DATA
from ..errors import CdxError
from ..io import read_json
from ..synth import LEVELS

NUM_CLASSES = 19
IMAGE_SIZE = 64
PARSE_SIZE = 32
CLASSIFIER_ATTRS: tuple[str, ...] = ("hair_color", "skin", "beard", "age", "lipstick")
DEFAULT_DIR = PACKAGE_DATA / "eval_nets"
MANIFEST = "eval_nets.json"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FaceParser(nn.Module):
    """(B, 3, 64, 64) in [-1, 1] -> (B, 19, 32, 32) class logits; a three-level UNet with skips."""

    def __init__(self, ch: tuple[int, int, int] = (24, 48, 96)):
        super().__init__()
        c1, c2, c3 = ch
        self.ch = tuple(ch)
        # (B, 3, 64, 64) -> PixelUnshuffle (lossless) -> (B, 12, 32, 32) -> (B, c1, 32, 32)
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), _conv(12, c1), _conv(c1, c1))
        self.down1 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))  # 32 -> 16
        self.down2 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3))  # 16 -> 8
        self.up1 = _conv(c3 + c2, c2)  # 8 -> 16
        self.up2 = _conv(c2 + c1, c1)  # 16 -> 32
        self.head = nn.Conv2d(c1, NUM_CLASSES, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s1 = self.stem(x)  # (B, c1, 32, 32)
        s2 = self.down1(s1)  # (B, c2, 16, 16)
        return s1, s2, self.down2(s2)  # bottleneck (B, c3, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1, s2, b = self.encode(x)
        u = self.up1(torch.cat([F.interpolate(b, scale_factor=2.0, mode="nearest"), s2], 1))  # (B, c2, 16, 16)
        u = self.up2(torch.cat([F.interpolate(u, scale_factor=2.0, mode="nearest"), s1], 1))  # (B, c1, 32, 32)
        return self.head(u)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c3) bottleneck averaged over space (the layout half of the FD features)."""
        return self.encode(x)[2].mean((2, 3))


class AttributeClassifier(nn.Module):
    """(B, 3, 64, 64) in [-1, 1] -> one logit vector per attribute of :data:`CLASSIFIER_ATTRS`."""

    def __init__(self, ch: tuple[int, int, int] = (32, 64, 128), feature_dim: int = 128):
        super().__init__()
        c1, c2, c3 = ch
        self.ch, self.feature_dim = tuple(ch), feature_dim
        self.trunk = nn.Sequential(
            nn.PixelUnshuffle(2), _conv(12, c1), _conv(c1, c1),  # 64 -> 32 (lossless 2x2 -> channels)
            _conv(c1, c2, 2), _conv(c2, c2),  # 32 -> 16
            _conv(c2, c3, 2), _conv(c3, c3),  # 16 -> 8
        )
        self.fc = nn.Sequential(nn.Linear(2 * c3, feature_dim), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({a: nn.Linear(feature_dim, len(LEVELS[a])) for a in CLASSIFIER_ATTRS})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) penultimate features: fc over [mean, max] pooled trunk output."""
        h = self.trunk(x)  # (B, c3, 8, 8)
        return self.fc(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))  # (B, 2*c3) -> (B, feature_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {a: head(f) for a, head in self.heads.items()}


def to_input(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, 64, 64) in [-1, 1]; other sizes get an antialiased bilinear resize."""
    t = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected images (B, H, W, 3), got shape {tuple(t.shape)}")
    x = t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, H, W)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def parse_target(labels: np.ndarray) -> np.ndarray:
    """(B, H, W) class ids -> (B, 32, 32) int64, the NEAREST resize the diffusion model's mask condition uses."""
    from ..models.masks import label_map_to_ids

    return np.stack([label_map_to_ids(l, PARSE_SIZE).reshape(PARSE_SIZE, PARSE_SIZE) for l in labels])


@dataclass
class EvalNets:
    """The loaded parser and classifier with batched, no-grad helpers on uint8 images."""

    parser: FaceParser
    classifier: AttributeClassifier
    info: dict
    batch: int = 256

    def _map(self, fn, images) -> torch.Tensor:
        x = to_input(images)
        with torch.inference_mode():
            return torch.cat([fn(x[i:i + self.batch]) for i in range(0, x.shape[0], self.batch)])

    def parse(self, images) -> np.ndarray:
        """(B, 32, 32) uint8 predicted class ids."""
        return self._map(lambda x: self.parser(x).argmax(1), images).numpy().astype(np.uint8)

    def attributes(self, images) -> np.ndarray:
        """(B, len(CLASSIFIER_ATTRS)) int64 predicted levels."""
        return self._map(lambda x: torch.stack([v.argmax(1) for v in self.classifier(x).values()], 1),
                         images).numpy()

    def features(self, images) -> np.ndarray:
        """(B, 224) float64 FD features: classifier penultimate (128) ++ parser pooled bottleneck (96)."""
        fn = lambda x: torch.cat([self.classifier.features(x), self.parser.pooled(x)], 1)  # noqa: E731
        return self._map(fn, images).double().numpy()


def save_eval_nets(parser: FaceParser, classifier: AttributeClassifier, out: str | Path, info: dict) -> None:
    """Write parser/classifier safetensors (fp16) and the JSON manifest into ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, net in (("parser", parser), ("classifier", classifier)):
        state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in net.state_dict().items()}
        save_file(state, str(out / f"{name}.safetensors"))
        (out / f"{name}.safetensors").chmod(0o644)
    arch = {"parser": {"ch": list(parser.ch)},
            "classifier": {"ch": list(classifier.ch), "feature_dim": classifier.feature_dim,
                           "attrs": list(CLASSIFIER_ATTRS)},
            "input": f"uint8 RGB resized to {IMAGE_SIZE}x{IMAGE_SIZE}, mapped to [-1, 1]",
            "parse_size": PARSE_SIZE}
    (out / MANIFEST).write_text(json.dumps({"architecture": arch, **info}, indent=1))


def load_eval_nets(folder: str | Path | None = None) -> EvalNets:
    """Load the shipped (or given) evaluation networks, in eval mode, fp32 on CPU."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DEFAULT_DIR
    if not (folder / MANIFEST).is_file():
        raise CdxError(f"{folder}: no evaluation networks ({MANIFEST} missing); make them with "
                       f"`python -m cdx.evaluation.train_nets --out {folder}`")
    remake = f"make them again with `python -m cdx.evaluation.train_nets --out {folder}`"
    try:
        info = read_json(folder / MANIFEST)
        arch = info["architecture"]
        parser = FaceParser(tuple(arch["parser"]["ch"]))
        classifier = AttributeClassifier(tuple(arch["classifier"]["ch"]), arch["classifier"]["feature_dim"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # nesting too deep: a ValueError
        raise CdxError(f"{folder / MANIFEST}: malformed ({type(e).__name__}); {remake}") from None
    for name, net in (("parser", parser), ("classifier", classifier)):
        try:
            state = load_file(str(folder / f"{name}.safetensors"))
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
            net.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - a missing, truncated or foreign weights file
            raise CdxError(f"{folder / name}.safetensors: unusable ({type(e).__name__}); {remake}") from None
        net.eval()
    return EvalNets(parser, classifier, info)
