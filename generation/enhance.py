"""Identity-safe enhancement: each step works inside the (feathered) face mask unless told
otherwise, and is followed by an identity-drift check that rejects the step when the
identity score drops by more than ``tolerance`` (default 0.01).

Steps: face refine (re-diffuse the face crop through any ``regenerate`` callable, paste back
feathered), unsharp-mask sharpening, Lab colour matching to the reference photos (and white
balance), noise reduction, and film grain.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from ..faces.detect import FaceDetector
from ..faces.mask import face_mask
from ..faces.preprocess import denoise as nl_means, grey_world

log = logging.getLogger(__name__)


def _blend(original: np.ndarray, changed: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return changed
    m = np.clip(mask, 0, 1)[..., None].astype(np.float32)
    out = original.astype(np.float32) * (1 - m) + changed.astype(np.float32) * m
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _check_mask(image: np.ndarray, mask: np.ndarray | None) -> None:
    if mask is not None and mask.shape != image.shape[:2]:
        raise ValueError(f"mask: size {mask.shape} does not match the image {image.shape[:2]}")


def sharpen(image: np.ndarray, mask: np.ndarray | None, radius: float = 1.5, amount: float = 0.8,
            threshold: float = 2.0) -> np.ndarray:
    """Unsharp mask: add ``amount`` x (image - blur) where that difference exceeds ``threshold``."""
    _check_mask(image, mask)
    x = image.astype(np.float32)
    detail = x - cv2.GaussianBlur(x, (0, 0), max(radius, 0.1))
    detail[np.abs(detail) < threshold] = 0
    return _blend(image, np.clip(x + amount * detail + 0.5, 0, 255).astype(np.uint8), mask)


def _lab_stats(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]):
    pixels = []
    for im, m in zip(images, masks):
        lab = cv2.cvtColor(im, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
        pixels.append(lab if m is None else lab[m.reshape(-1) > 0.5])
    allpx = np.concatenate(pixels)
    if len(allpx) == 0:
        raise ValueError("reference: no face pixels to take colour statistics from")
    return allpx.mean(0), allpx.std(0) + 1e-3


def color_match(image: np.ndarray, mask: np.ndarray | None, references: Sequence[np.ndarray],
                reference_masks: Sequence[np.ndarray | None] | None = None, strength: float = 1.0,
                white_balance: bool = False) -> np.ndarray:
    """Match the Lab mean and spread of the face region to the references' face regions."""
    _check_mask(image, mask)
    if len(references) == 0:
        raise ValueError("reference: the reference batch is empty")
    base = grey_world(image) if white_balance else image
    ref_mu, ref_sd = _lab_stats(references, reference_masks or [None] * len(references))
    src_mu, src_sd = _lab_stats([base], [mask])
    lab = cv2.cvtColor(base, cv2.COLOR_RGB2LAB).astype(np.float32)
    matched = (lab - src_mu) / src_sd * ref_sd + ref_mu
    lab = lab + strength * (matched - lab)
    out = cv2.cvtColor(np.clip(lab + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return _blend(image, out, mask)


def reduce_noise(image: np.ndarray, mask: np.ndarray | None, strength: float = 5.0) -> np.ndarray:
    _check_mask(image, mask)
    return _blend(image, nl_means(image, strength), mask)


def film_grain(image: np.ndarray, mask: np.ndarray | None, amount: float = 0.03, size: float = 1.0,
               seed: int = 0) -> np.ndarray:
    """Monochrome gaussian grain of std ``amount`` (0..1 units), blurred to ``size`` px."""
    _check_mask(image, mask)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, amount * 255, image.shape[:2]).astype(np.float32)
    if size > 1:
        noise = cv2.GaussianBlur(noise, (0, 0), size / 2) * size
    out = np.clip(image.astype(np.float32) + noise[..., None] + 0.5, 0, 255).astype(np.uint8)
    return _blend(image, out, mask)


def refine_face(image: np.ndarray, mask: np.ndarray, box: np.ndarray,
                regenerate: Callable[[np.ndarray], np.ndarray], crop_size: int = 512,
                margin: float = 0.3) -> np.ndarray:
    """FaceDetailer's idea: crop the face with ``margin``, upscale to ``crop_size``, let
    ``regenerate`` re-diffuse it (low denoise, same model/LoRA/prompt), scale back and
    paste with the feathered mask."""
    _check_mask(image, mask)
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    s = crop_size / side
    m = np.array([[s, 0, crop_size / 2 - cx * s], [0, s, crop_size / 2 - cy * s]])
    crop = cv2.warpAffine(image, m, (crop_size, crop_size), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT_101)
    new = regenerate(crop)
    if new.shape != crop.shape:
        raise ValueError(f"regenerate: returned {new.shape}, expected {crop.shape}")
    back = cv2.warpAffine(new, cv2.invertAffineTransform(m), (w, h), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)
    return _blend(image, back, mask)


@dataclass
class StepReport:
    name: str
    applied: bool
    score_before: float | None
    score_after: float | None
    reason: str | None = None
    params: dict = field(default_factory=dict)


class IdentityGuard:
    """Scores images against a fixed reference and accepts or rejects enhancement steps."""

    def __init__(self, embedder, references: Sequence[np.ndarray], tolerance: float = 0.01):
        from ..faces.identity import Reference

        if tolerance < 0:
            raise ValueError(f"tolerance: must be >= 0, got {tolerance}")
        self.embedder = embedder
        self.tolerance = tolerance
        if len(references) == 0:
            raise ValueError("reference: the reference batch is empty")
        self.reference = Reference(embedder.embed(references))

    def score(self, image: np.ndarray) -> float | None:
        return self.reference.score(self.embedder, image)

    def apply(self, name: str, image: np.ndarray, step: Callable[[np.ndarray], np.ndarray],
              params: dict | None = None, before: float | None = None) -> tuple[np.ndarray, StepReport]:
        before = self.score(image) if before is None else before
        candidate = step(image)
        after = self.score(candidate)
        if before is None:
            return image, StepReport(name, False, None, after, "no face in the input", params or {})
        if after is None:
            return image, StepReport(name, False, before, None, "the face was lost", params or {})
        if after < before - self.tolerance:
            return image, StepReport(name, False, before, after,
                                     f"identity dropped by {before - after:.4f} (> {self.tolerance})",
                                     params or {})
        return candidate, StepReport(name, True, before, after, None, params or {})


def face_region(image: np.ndarray, detector: FaceDetector | None = None, feather: float = 0.15):
    """(feathered face mask, face box) of the largest face, or (None, None)."""
    faces = (detector or FaceDetector()).detect([image], min_face_size=20)[0]
    if not faces:
        return None, None
    face = max(faces, key=lambda f: f.area)
    return face_mask(face.landmarks, image.shape[:2], feather), face.box


STEPS = ("sharpen", "color_match", "denoise", "film_grain", "face_refine")


def enhance_images(images: Sequence[np.ndarray], references: Sequence[np.ndarray], step: str,
                   params: dict, embedder_name: str = "dlib", tolerance: float = 0.01,
                   masks: Sequence[np.ndarray] | None = None, whole_image: bool = False,
                   regenerate: Callable[[np.ndarray], np.ndarray] | None = None,
                   ) -> tuple[list[np.ndarray], list[StepReport]]:
    """Run one enhancement ``step`` on every image, guarded by the identity-drift check."""
    out, reports = enhance_chain(images, references, [(step, params)], embedder_name, tolerance, masks,
                                 whole_image, regenerate)
    return out, [r[0] for r in reports]


def enhance_chain(images: Sequence[np.ndarray], references: Sequence[np.ndarray],
                  steps: Sequence[tuple[str, dict]], embedder_name: str = "dlib", tolerance: float = 0.01,
                  masks: Sequence[np.ndarray] | None = None, whole_image: bool = False,
                  regenerate: Callable[[np.ndarray], np.ndarray] | None = None,
                  ) -> tuple[list[np.ndarray], list[list[StepReport]]]:
    """Run enhancement ``steps`` ((name, params), in order) on every image, each step guarded
    by the identity-drift check: a rejected step leaves the image as it was for the next one.
    Returns the images and, per image, one report per step.

    The face mask of each image is detected unless ``masks`` are given; ``whole_image``
    applies the steps everywhere (the drift check still runs).
    """
    from ..faces.identity import get_embedder

    for step, _ in steps:
        if step not in STEPS:
            raise ValueError(f"step: unknown '{step}', one of {', '.join(STEPS)}")
    if len(images) == 0:
        raise ValueError("images: the batch is empty")
    guard = IdentityGuard(get_embedder(embedder_name), references, tolerance)
    detector = FaceDetector()
    ref_masks = [face_region(r, detector)[0] for r in references] if any(s == "color_match" for s, _ in steps) \
        else None
    out, reports = [], []
    for i, image in enumerate(images):
        image_reports = []
        for step, params in steps:
            image, report = _guarded_step(image, step, params, guard, detector, references, ref_masks,
                                          masks[i] if masks is not None else None, whole_image, regenerate)
            image_reports.append(report)
        out.append(image)
        reports.append(image_reports)
    return out, reports


def _guarded_step(image, step, params, guard, detector, references, ref_masks, given_mask, whole_image,
                  regenerate) -> tuple[np.ndarray, StepReport]:
    mask, box = (given_mask, None) if given_mask is not None else face_region(image, detector)
    if given_mask is not None and step == "face_refine":
        _, box = face_region(image, detector)
    if mask is None and not whole_image:
        return image, StepReport(step, False, None, None, "no face found", params)
    region = None if whole_image else mask

    def run(im):
        if step == "sharpen":
            return sharpen(im, region, **params)
        if step == "color_match":
            return color_match(im, region, references, ref_masks, **params)
        if step == "denoise":
            return reduce_noise(im, region, **params)
        if step == "film_grain":
            return film_grain(im, region, **params)
        if regenerate is None or box is None:
            raise ValueError("face_refine: needs a regenerate function and a detected face")
        return refine_face(im, mask if region is None else region, box, regenerate, **params)

    return guard.apply(step, image, run, params)
