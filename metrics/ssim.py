"""SSIM in torch, batched, matching scikit-image's ``structural_similarity``.

``gaussian=True`` is Wang et al.'s setting (11x11 Gaussian window, sigma 1.5, population
covariance) = skimage's ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``;
``gaussian=False`` is skimage's default (7x7 uniform window, sample covariance). Like
skimage, the SSIM map is averaged over the image without its border of half a window, so
no padding mode is involved.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

K1, K2 = 0.01, 0.03


def _window(gaussian: bool, sigma: float = 1.5) -> torch.Tensor:
    if gaussian:
        radius = int(3.5 * sigma + 0.5)  # scipy's gaussian_filter with truncate=3.5
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * (x / sigma) ** 2)
    else:
        w = torch.ones(7, dtype=torch.float64)
    return w / w.sum()


@torch.no_grad()
def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, gaussian: bool = True) -> torch.Tensor:
    """SSIM per image of two batches ``[B, C, H, W]`` (channels averaged; float32 maths,
    within 1e-4 of scikit-image's float64)."""
    if a.shape != b.shape:
        raise ValueError(f"images: SSIM needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    w = _window(gaussian).to(a.device)
    k = len(w)
    if min(a.shape[-2:]) < k:
        raise ValueError(f"images: at least {k}x{k} px are needed, got {tuple(a.shape[-2:])}")
    c = a.shape[1]
    a, b = a.float(), b.float()
    w = w.float()

    def filt(x):  # separable, 'valid'
        x = F.conv2d(x, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        return F.conv2d(x, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)

    n = k * k
    cov_norm = 1.0 if gaussian else n / (n - 1)
    ux, uy = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - ux * ux)
    vy = cov_norm * (filt(b * b) - uy * uy)
    vxy = cov_norm * (filt(a * b) - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).float()


def to_tensor(images) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` images (a list) -> float ``[B, 3, H, W]`` in 0..1."""
    import numpy as np

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
