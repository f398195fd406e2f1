"""Distribution distances on feature vectors: FID (Fréchet distance of Gaussians) and KID
(unbiased squared MMD with the cubic polynomial kernel)."""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with tr((S1 S2)^(1/2)) taken as the
    sum of square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric, stable)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    tr_cov = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_cov)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("features: FID needs at least 2 images per set")
    if min(len(a), len(b)) < a.shape[1]:
        log.warning("FID from %d and %d images of %d-d features is biased and unstable; "
                     "read KID first", len(a), len(b), a.shape[1])
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """(mean, std) over random subsets of the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    n = min(len(a), len(b), subset_size)
    if n < 2:
        raise ValueError("features: KID needs at least 2 images per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), n, replace=False)]
        y = b[rng.choice(len(b), n, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
               - 2 * kxy.mean())
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
