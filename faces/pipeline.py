"""One photo through the face stage: detect -> choose -> align -> score -> preprocess -> mask.

Works on in-memory pixels (nodes) and on files (dataset building) alike. Detection runs on
a reduced copy; the warp reads the smallest decode that still has the resolution the
aligned output needs, so a 12-megapixel JPEG is never fully decoded for a 512 px crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from .align import BORDER_MODES, alignment_matrix, apply_transform, crop_subject, transform_scale
from .config import PrepareConfig
from .detect import Face, FaceDetector
from .mask import box_mask, face_mask
from .preprocess import preprocess
from .quality import MEASURE_SIZE, measure, rejection_reason

# (max_side or None for full resolution) -> (pixels, scale from those pixels to full resolution)
Loader = Callable[[int | None], tuple[np.ndarray, float]]


@dataclass
class AlignedPhoto:
    accepted: bool
    reason: str | None = None
    image: np.ndarray | None = None  # uint8 [S, S, 3], preprocessed
    mask: np.ndarray | None = None  # float32 [S, S]
    face: Face | None = None  # in full-resolution source pixels
    matrix: np.ndarray | None = None  # 2x3, full-resolution source -> output pixels
    aligned_landmarks: np.ndarray | None = None
    scores: dict = field(default_factory=dict)
    faces_found: int = 0
    preprocess: list[str] = field(default_factory=list)
    crops: list["WiderCrop"] = field(default_factory=list)


@dataclass
class WiderCrop:
    """A head-and-shoulders or half-body crop (``faces.crops``) of an accepted photo."""

    kind: str
    image: np.ndarray  # uint8 [H, W, 3], preprocessed, at its bucket's size
    mask: np.ndarray  # float32 [H, W]: the face
    box: tuple[float, float, float, float]  # in full-resolution source pixels


def detection_min_size(cfg: PrepareConfig, detect_scale: float) -> float:
    """Smallest face worth searching for, in pixels of the detection copy: faces under
    ``min_face_px`` are rejected anyway (with a 2x allowance for box and pyramid differences)."""
    return max(12.0, min(cfg.min_face_px * 0.5 / detect_scale, 80.0))


REFINE_SIZE = 256


def detect_faces(detector: FaceDetector, pixels: np.ndarray, cfg: PrepareConfig,
                 detect_scale: float) -> list[Face]:
    """Coarse-to-fine: faces found on a small copy, landmarks refined on a crop around each
    (where the face is ~128 px); the full search runs when the coarse pass finds nothing."""
    min_size = detection_min_size(cfg, detect_scale)
    h, w = pixels.shape[:2]
    coarse_side = cfg.detect_coarse_side
    if coarse_side and cfg.multiple_faces == "largest" and max(h, w) > coarse_side * 2.5:
        f = coarse_side / max(h, w)
        small = cv2.resize(pixels, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        coarse = [c for c in detector.detect([small], min_face_size=max(12.0, min_size * f))[0]
                  if c.probability >= cfg.min_confidence]
        if coarse:
            refined = [_refine(detector, pixels, c.scaled(1.0 / f)) for c in coarse]
            return sorted(refined, key=lambda x: -x.probability)
    return detector.detect([pixels], min_face_size=min_size)[0]


def _refine(detector: FaceDetector, pixels: np.ndarray, face: Face) -> Face:
    """Detect again on an upright square crop twice the face's size at REFINE_SIZE px
    (MTCNN's landmarks are most precise on upright faces), and map the result back."""
    side = 2.0 * max(face.width, face.height)
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    s = REFINE_SIZE / side
    dx, dy = face.landmarks[1] - face.landmarks[0]
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(np.degrees(np.arctan2(dy, dx))), s)
    m[:, 2] += np.array([REFINE_SIZE / 2 - cx, REFINE_SIZE / 2 - cy])
    crop = cv2.warpAffine(pixels, m, (REFINE_SIZE, REFINE_SIZE),
                          flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    found = detector.detect([crop], min_face_size=REFINE_SIZE / 4)[0]
    if not found:
        return face
    centre = np.array([REFINE_SIZE / 2, REFINE_SIZE / 2])
    best = min(found, key=lambda x: np.hypot(*((x.box[:2] + x.box[2:]) / 2 - centre)))
    back = cv2.invertAffineTransform(m)
    landmarks = apply_transform(back, best.landmarks)
    corners = apply_transform(back, np.array([[best.box[0], best.box[1]], [best.box[2], best.box[1]],
                                              [best.box[0], best.box[3]], [best.box[2], best.box[3]]]))
    box = np.concatenate([corners.min(0), corners.max(0)])  # axis-aligned box of the upright one
    return Face(box, best.probability, landmarks, dict(best.extra))


def choose_face(faces: list[Face], cfg: PrepareConfig) -> tuple[Face | None, str | None]:
    if not faces:
        return None, "no face"
    confident = [f for f in faces if f.probability >= cfg.min_confidence]
    if cfg.multiple_faces == "reject" and len(confident) > 1:
        return None, f"several faces ({len(confident)})"
    pool = confident or faces
    return max(pool, key=lambda f: f.area), None


def _working_image(detect_pixels: np.ndarray, detect_scale: float, needed: float,
                   full_long_side: int, load: Loader | None) -> tuple[np.ndarray, float]:
    """The cheapest decode whose resolution is at least ``needed`` of full resolution."""
    if load is None or 1.0 / detect_scale >= needed * 0.999:
        return detect_pixels, detect_scale
    if needed >= 1.0:
        return load(None)
    return load(int(math.ceil(full_long_side * needed * 1.05)))


def align_photo(detect_pixels: np.ndarray, detect_scale: float, full_size: tuple[int, int],
                cfg: PrepareConfig, faces: list[Face] | None = None,
                detector: FaceDetector | None = None, load: Loader | None = None,
                box: list[float] | None = None) -> AlignedPhoto:
    """Align one photo. ``detect_pixels`` times ``detect_scale`` = full-resolution pixels.

    ``faces`` may be given (already detected on ``detect_pixels``, e.g. in a batch);
    ``load(max_side)`` decodes the photo again at a higher resolution when needed.
    """
    size = cfg.resolution
    full_long = max(full_size)
    if cfg.subject == "object":
        return _crop_object(detect_pixels, detect_scale, full_size, cfg, load, box)

    if faces is None:
        faces = detect_faces(detector or FaceDetector(), detect_pixels, cfg, detect_scale)
    face, reason = choose_face(faces, cfg)
    if face is None:
        return AlignedPhoto(False, reason, faces_found=len(faces))
    face_full = face.scaled(detect_scale)
    matrix_full = alignment_matrix(face_full.landmarks, size, cfg.face_margin, cfg.align_mode)
    pixels, scale = _working_image(detect_pixels, detect_scale, transform_scale(matrix_full),
                                   full_long, load)
    matrix_work = matrix_full.copy()
    matrix_work[:, :2] *= scale

    interp = cv2.INTER_AREA if transform_scale(matrix_work) < 1.0 else cv2.INTER_CUBIC
    aligned = cv2.warpAffine(pixels, matrix_work, (size, size), flags=interp,
                             borderMode=BORDER_MODES[cfg.border], borderValue=(0, 0, 0))
    aligned_landmarks = apply_transform(matrix_full, face_full.landmarks)
    # Quality is a property of the photo, not of the output size: score a tight face crop
    # warped from the same pixels at a fixed size.
    measure_matrix = alignment_matrix(face_full.landmarks, MEASURE_SIZE, 0.0, cfg.align_mode)
    measure_matrix[:, :2] *= scale
    region = cv2.warpAffine(pixels, measure_matrix, (MEASURE_SIZE, MEASURE_SIZE),
                            flags=cv2.INTER_AREA if transform_scale(measure_matrix) < 1 else cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REPLICATE)
    scores = measure(region, face_full.landmarks, face.probability,
                     min(face_full.width, face_full.height), len(faces))
    reason = rejection_reason(scores, cfg)
    result = AlignedPhoto(reason is None, reason, face=face_full, matrix=matrix_full,
                          aligned_landmarks=aligned_landmarks, scores=scores.to_json(),
                          faces_found=len(faces))
    if reason is None:
        result.image, result.preprocess = preprocess(aligned, cfg)
        result.mask = face_mask(aligned_landmarks, (size, size), cfg.mask_feather)
        result.crops = wider_crops(face_full, full_size, detect_pixels, detect_scale, cfg, load)
    return result


def wider_crops(face: Face, full_size: tuple[int, int], detect_pixels, detect_scale: float,
                cfg: PrepareConfig, load: Loader | None) -> list[WiderCrop]:
    """The head-and-shoulders / half-body crops ``cfg.wider_crops`` asks for that the photo has."""
    from .crops import CHOICES, SHAPES, crop_box, cut, to_bucket, to_crop

    out = []
    for kind in CHOICES[cfg.wider_crops]:
        box = crop_box(face.box, full_size, SHAPES[kind])
        if box is None:
            continue
        box, size = to_bucket(box, cfg.resolution)
        pixels, scale = _working_image(detect_pixels, detect_scale, size[1] / (box[3] - box[1]),
                                       max(full_size), load)
        image, _ = preprocess(cut(pixels, scale, box, size), cfg)
        mask = face_mask(to_crop(face.landmarks, box, size), (size[1], size[0]), cfg.mask_feather)
        out.append(WiderCrop(kind, image, mask, tuple(round(float(v), 2) for v in box)))
    return out


def _crop_object(detect_pixels, detect_scale, full_size, cfg, load, box) -> AlignedPhoto:
    size = cfg.resolution
    side_full = min(full_size)
    if box is not None:
        side_full = min(side_full, max(box[2] - box[0], box[3] - box[1]))
    pixels, scale = _working_image(detect_pixels, detect_scale, size / side_full,
                                   max(full_size), load)
    work_box = None if box is None else np.asarray(box, np.float64) / scale
    crop, matrix_work = crop_subject(pixels, size, work_box)
    matrix_full = matrix_work.copy()
    matrix_full[:, :2] /= scale
    if box is None:  # no subject box: the centre of the crop
        margin = size * 0.1
        subject = np.array([margin, margin, size - margin, size - margin])
    else:  # the subject box, in the crop's pixels
        corners = apply_transform(matrix_full, np.array([[box[0], box[1]], [box[2], box[3]]], np.float64))
        subject = np.clip(corners.reshape(-1), 0, size)
    mask = box_mask(subject, (size, size), cfg.mask_feather)
    image, stages = preprocess(crop, cfg)
    return AlignedPhoto(True, None, image=image, mask=mask, matrix=matrix_full,
                        preprocess=stages)


def align_images(images: list[np.ndarray], cfg: PrepareConfig,
                 detector: FaceDetector | None = None) -> list[AlignedPhoto]:
    """Align in-memory photos; same-size photos are detected in one batched call."""
    if cfg.subject == "object":
        return [align_photo(im, 1.0, (im.shape[1], im.shape[0]), cfg) for im in images]
    detector = detector or FaceDetector()
    reduced, scales = [], []
    for im in images:
        long_side = max(im.shape[:2])
        if long_side > cfg.detect_max_side:
            f = cfg.detect_max_side / long_side
            reduced.append(cv2.resize(im, (round(im.shape[1] * f), round(im.shape[0] * f)),
                                      interpolation=cv2.INTER_AREA))
            scales.append(1.0 / f)
        else:
            reduced.append(im)
            scales.append(1.0)
    all_faces = detector.detect(reduced, min_face_size=min(
        detection_min_size(cfg, s) for s in scales))
    results = []
    for im, small, scale, faces in zip(images, reduced, scales, all_faces):
        results.append(align_photo(small, scale, (im.shape[1], im.shape[0]), cfg, faces=faces,
                                   load=lambda _side, im=im: (im, 1.0)))
    return results
