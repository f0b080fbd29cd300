"""The paper's three scores, on arrays: Frechet distance of features, pixel accuracy, attribute accuracy; and
the PSNR by which images of two backends or two paths are compared."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images or batches of them (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0 ** 2 / mse))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh; tiny negative eigenvalues -> 0)."""
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982; the FID formula).

    tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2): the second matrix is symmetric PSD and similar to S1 S2,
    so two `eigh` calls replace scipy's general `sqrtm` and its complex round-off.
    """
    s1h = _sqrt_psd(sigma1)
    inner = s1h @ sigma2 @ s1h
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean, 0.0))


def fd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two (N, D) feature sets."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


def pixel_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction of equal class ids over all pixels of all images (same shapes)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    return float((pred == target).mean())


def attribute_accuracy(pred: np.ndarray, true: np.ndarray, stated: np.ndarray,
                       names: Sequence[str]) -> tuple[float, dict[str, float | None]]:
    """Accuracy over the (image, attribute) pairs the caption states, and per attribute (None if never stated).

    pred, true: (N, A) int levels; stated: (N, A) bool; names: the A attribute names.
    """
    ok = np.asarray(pred) == np.asarray(true)  # (N, A)
    stated = np.asarray(stated, dtype=bool)
    if ok.shape != stated.shape or ok.shape[1] != len(names):
        raise ValueError(f"shapes differ: pred/true {ok.shape}, stated {stated.shape}, {len(names)} names")
    overall = float(ok[stated].mean()) if stated.any() else float("nan")
    per = {a: (float(ok[stated[:, j], j].mean()) if stated[:, j].any() else None) for j, a in enumerate(names)}
    return overall, per


def paired_ci(num_a: np.ndarray, num_b: np.ndarray, den: np.ndarray, reps: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float, float]:
    """The difference of two accuracies measured on the same N items, sum(num_a)/sum(den) - sum(num_b)/sum(den),
    with a paired bootstrap interval over the items: (difference, low, high).

    num_a, num_b: (N,) correct counts of two methods per item (image); den: (N,) what was counted per item
    (pixels, stated attributes). Resampling whole items keeps each pair together, so the interval reflects
    how much the difference depends on the particular conditions drawn.
    """
    num_a, num_b, den = (np.asarray(v, dtype=np.float64) for v in (num_a, num_b, den))
    if not (num_a.shape == num_b.shape == den.shape) or num_a.ndim != 1 or len(den) < 2:
        raise ValueError(f"need three (N >= 2,) arrays, got {num_a.shape}, {num_b.shape}, {den.shape}")
    if den.sum() <= 0:
        raise ValueError("nothing was counted (den sums to 0)")
    diff = float((num_a.sum() - num_b.sum()) / den.sum())
    idx = np.random.default_rng(seed).integers(0, len(den), size=(reps, len(den)))
    d = den[idx].sum(1)
    boot = (num_a[idx].sum(1) - num_b[idx].sum(1)) / np.where(d > 0, d, np.nan)
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return diff, float(lo), float(hi)


def paired_fd_cis(features_a: np.ndarray, others: dict[str, np.ndarray], ref_mu: np.ndarray, ref_sigma: np.ndarray,
                  reps: int = 300, seed: int = 0, level: float = 0.95,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, tuple[float, float, float]]:
    """FD(a) - FD(b) for each feature set b of `others`, against the same reference statistics, a and every b
    generated from the same N conditions, with paired bootstrap intervals: each replicate draws N conditions
    with replacement and scores every method's images of those conditions (a's FD once per replicate). The
    bootstrap's duplicates bias each FD upwards; the difference is what is read. Returns per key of `others`
    (difference, low, high). `progress(done, reps)` is called after each replicate."""
    fa = np.asarray(features_a, np.float64)
    fbs = {k: np.asarray(v, np.float64) for k, v in others.items()}
    for fb in fbs.values():
        if fa.shape != fb.shape or fa.ndim != 2 or fa.shape[0] < 2:
            raise ValueError(f"need two (N >= 2, D) feature arrays of one shape, got {fa.shape}, {fb.shape}")

    def fd_ref(f: np.ndarray) -> float:
        return frechet_distance(*feature_stats(f), ref_mu, ref_sigma)

    rng = np.random.default_rng(seed)
    boot = {k: np.empty(reps) for k in fbs}
    for r in range(reps):
        idx = rng.integers(0, len(fa), size=len(fa))
        fd_a = fd_ref(fa[idx])
        for k, fb in fbs.items():
            boot[k][r] = fd_a - fd_ref(fb[idx])
        if progress is not None:
            progress(r + 1, reps)
    fd_a, out = fd_ref(fa), {}
    for k, fb in fbs.items():
        lo, hi = np.quantile(boot[k], [(1 - level) / 2, (1 + level) / 2])
        out[k] = (float(fd_a - fd_ref(fb)), float(lo), float(hi))
    return out
