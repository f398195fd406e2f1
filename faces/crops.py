"""Wider crops around a detected face: head-and-shoulders and half-body, so that a subject LoRA
learns more than a close-up.

Each kind is a box placed by the face box (height ``fh``, centre ``cx, cy``): ``height`` face
heights tall, ``aspect`` wide for each unit of height, the face centre ``face_at`` of the way
down. A box larger than the photo is scaled down to fit (keeping its aspect), then moved inside
the photo; the photo *has* that crop when the fitted box is still ``min_height`` face heights
tall and contains the face box. Each crop is cut to the nearest aspect-ratio bucket
(``core.buckets``) of the dataset resolution and resized to that bucket's size, so the trainer
uses it as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..core.buckets import nearest_bucket


@dataclass(frozen=True)
class CropShape:
    height: float  # face heights
    aspect: float  # width / height
    face_at: float  # the face centre's height in the box, from the top
    min_height: float  # face heights the fitted box must keep


SHAPES = {
    "head_shoulders": CropShape(height=3.2, aspect=0.8, face_at=0.38, min_height=2.4),
    "half_body": CropShape(height=6.0, aspect=2 / 3, face_at=0.2, min_height=4.2),
}
CHOICES = {"none": (), "head_shoulders": ("head_shoulders",), "half_body": ("half_body",),
           "both": ("head_shoulders", "half_body")}


def crop_box(face_box, photo_size: tuple[int, int], shape: CropShape) -> tuple[float, float, float, float] | None:
    """The box (x1, y1, x2, y2) of ``shape`` around ``face_box`` in a photo of ``photo_size``
    (width, height), or None when the photo does not have it."""
    x1, y1, x2, y2 = (float(v) for v in face_box)
    fh, cx, cy = y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
    width, height = photo_size
    h = shape.height * fh
    w = h * shape.aspect
    fit = min(1.0, width / w, height / h)
    w, h = w * fit, h * fit
    if h < shape.min_height * fh:
        return None
    left = min(max(cx - w / 2, 0.0), width - w)
    top = min(max(cy - shape.face_at * h, 0.0), height - h)
    box = (left, top, left + w, top + h)
    if not (box[0] <= x1 + 1e-6 and box[1] <= y1 + 1e-6 and box[2] >= x2 - 1e-6 and box[3] >= y2 - 1e-6):
        return None
    return box


def to_bucket(box, resolution: int) -> tuple[tuple[float, ...], tuple[int, int]]:
    """The box cut (around its centre) to the aspect of its nearest bucket (in 64 px steps,
    which every family takes), and that bucket."""
    x1, y1, x2, y2 = box
    bw, bh = nearest_bucket(x2 - x1, y2 - y1, resolution)
    w, h = x2 - x1, y2 - y1
    if w / h > bw / bh:  # too wide: narrower
        nw = h * bw / bh
        x1, x2 = x1 + (w - nw) / 2, x1 + (w + nw) / 2
    else:
        nh = w * bh / bw
        y1, y2 = y1 + (h - nh) / 2, y1 + (h + nh) / 2
    return (x1, y1, x2, y2), (bw, bh)


def cut(pixels: np.ndarray, scale: float, box, size: tuple[int, int]) -> np.ndarray:
    """The full-resolution ``box`` of a photo decoded at ``pixels`` (``pixels * scale`` = full
    resolution), resized to ``size`` (w, h)."""
    x1, y1, x2, y2 = (v / scale for v in box)
    sx, sy = size[0] / (x2 - x1), size[1] / (y2 - y1)
    matrix = np.array([[sx, 0, -x1 * sx], [0, sy, -y1 * sy]], np.float64)
    return cv2.warpAffine(pixels, matrix, size, flags=cv2.INTER_AREA if sx < 1 else cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def to_crop(points: np.ndarray, box, size: tuple[int, int]) -> np.ndarray:
    """Full-resolution points in the pixels of the crop of ``box`` at ``size``."""
    x1, y1, x2, y2 = box
    return (np.asarray(points, np.float64) - [x1, y1]) * [size[0] / (x2 - x1), size[1] / (y2 - y1)]
