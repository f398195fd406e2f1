"""Variants of the real photos: rotation, scale, mirror, padding."""
from __future__ import annotations

import cv2
import numpy as np


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    h, w = image.shape[:2]
    out = {"original": image}
    for angle in (-20, 20):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        out[f"rotated{angle:+d}"] = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    for s in (0.5, 2.0):
        out[f"scaled{s}"] = cv2.resize(image, None, fx=s, fy=s,
                                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    out["mirrored"] = np.ascontiguousarray(image[:, ::-1])
    out["padded"] = cv2.copyMakeBorder(image, 120, 20, 200, 10, cv2.BORDER_CONSTANT, value=(30, 30, 30))
    return out
