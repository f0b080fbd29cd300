"""Geometry and randomness shared by the layout and colour parts: the face-local pixel grid with its
shape primitives, and named draws from one seeded stream.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np


class Draws:
    """`n` uniform draws in [0, 1) from `rng`, each taken by the name of what it sets.

    Every name owns a fixed slot (`slots`: name -> index, or (index, count) for a vector), so a part reads
    its values by name and no part shifts another's when it changes. The slots are the positions the
    generator has always used: a face drawn from a seed is the same as before the names existed."""

    def __init__(self, rng: np.random.Generator, slots: Mapping[str, int | tuple[int, int]], n: int):
        self.u = rng.random(n)
        self.slots = slots

    def u01(self, name: str) -> float:
        return float(self.u[self.slots[name]])

    def between(self, name: str, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(self.u[self.slots[name]])

    def vec(self, name: str) -> np.ndarray:
        start, count = self.slots[name]
        return self.u[start:start + count]


@functools.lru_cache(maxsize=16)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


class Grid:
    """Face-local coordinates: origin at the face centre, x right, y down, unit = image size / scale."""

    def __init__(self, size: int, cx: float, cy: float, scale: float, roll: float):
        x, y = pixel_grid(size)
        c, s = np.cos(roll), np.sin(roll)
        dx, dy = x - cx, y - cy
        self.X = ((c * dx + s * dy) / scale).astype(np.float32)
        self.Y = ((-s * dx + c * dy) / scale).astype(np.float32)
        self.px = 1.0 / (size * scale)  # one pixel in local units
        self.rmin = 0.75 * self.px  # an ellipse with both radii >= 0.71 px always contains a pixel centre

    def ell(self, cx, cy, rx, ry, p: float = 2.0):
        rx = max(rx, self.rmin)
        ry = max(ry, self.rmin)
        if p == 2.0:
            return ((self.X - cx) / rx) ** 2 + ((self.Y - cy) / ry) ** 2 <= 1.0
        return np.abs((self.X - cx) / rx) ** p + np.abs((self.Y - cy) / ry) ** p <= 1.0

    def tapered(self, cx, cy, rx, ry, k):
        """Ellipse whose half-width shrinks (k > 0) or grows (k < 0) linearly towards its bottom."""
        rx = max(rx, self.rmin)
        ry = max(ry, self.rmin)
        v = (self.Y - cy) / ry
        w = rx * (1.0 - k * np.clip(v, 0.0, 1.0)) if k > 0 else rx * (1.0 - k * (np.clip(v, -1.0, 1.0) + 1.0) * 0.5)
        return ((self.X - cx) / w) ** 2 + v * v <= 1.0

    def band(self, curve_y, half, x0, x1):
        """Pixels within ``half`` of the curve y = curve_y (an array over the grid), for x0 <= X <= x1."""
        half = np.maximum(half, 0.55 * self.px)
        return (np.abs(self.Y - curve_y) <= half) & (self.X >= x0) & (self.X <= x1)

