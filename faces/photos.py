"""Reading user photos robustly: every failure becomes a :class:`PhotoError` with a reason.

Nothing here ever writes to a source photo. Odd files are normalised (EXIF orientation,
CMYK, 16-bit, palette, alpha, grayscale) or rejected with a reason a person can act on.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core import confine

log = logging.getLogger(__name__)

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 32


class PhotoError(ValueError):
    """A photo that cannot be used; ``reason`` is short and stable (it goes in manifests)."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class Photo:
    """A decoded photo: ``pixels`` may be a reduced copy, ``scale`` maps it back.

    Coordinates in ``pixels`` times ``scale`` give coordinates in the full-resolution,
    orientation-corrected photo of size ``full_size`` (width, height).
    """

    path: str
    pixels: np.ndarray  # uint8 [H, W, 3]
    full_size: tuple[int, int]
    scale: float
    mode: str
    exif_rotated: bool
    frames: int = 1  # an animated image: the first frame is the photo


def is_image_file(path: Path) -> bool:
    """True when the file's content is an image Pillow can open (whatever its name says)."""
    try:
        with Image.open(path) as im:
            return im.format is not None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def list_photos(folder: str | Path) -> list[Path]:
    """Files in ``folder`` (not recursive) that are photos by their extension or, whatever
    their name (a GIF, a file without extension), by their content; sorted by name. Other
    files (captions, notes) are not photos and are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photos folder '{folder}' does not exist or is not a folder")
    # a file that links outside the allowed folders (on a server) is listed when its name says
    # photo, so that loading it reports it, and never opened to find out
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and (p.suffix.lower() in PHOTO_EXTENSIONS or (confine.allowed(p) and is_image_file(p))))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _to_rgb(img: Image.Image, path: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.max() > 1.0 else 1.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    if mode == "RGB;16" or mode.startswith("RGB") and mode != "RGB":
        return np.asarray(img.convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_photo(path: str | Path, max_side: int | None = None,
               max_pixels: int = 150_000_000) -> Photo:
    """Decode ``path`` as RGB uint8 with EXIF orientation applied.

    With ``max_side``, a JPEG is decoded at a reduced scale (JPEG draft mode: 1/2, 1/4,
    1/8) and any format is then resized so its longer side is at most ``max_side``;
    ``Photo.scale`` maps coordinates back to full resolution.
    """
    path = Path(path)
    if not confine.allowed(path):
        raise PhotoError(path, "outside ComfyUI's folders", "the file is a link to a file outside them; not read")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            width, height = img.size
            if width * height > max_pixels:
                raise PhotoError(path, "too large",
                                 f"{width}x{height} px is over the {max_pixels:,} pixel limit")
            if min(width, height) < MIN_SIDE:
                raise PhotoError(path, "too small",
                                 f"{width}x{height} px, each side must be at least {MIN_SIDE}")
            original_mode = img.mode
            frames = int(getattr(img, "n_frames", 1) or 1)
            if max_side and img.format == "JPEG" and max(width, height) > max_side:
                img.draft("RGB", (max_side, max_side))
            orientation = img.getexif().get(0x0112, 1)
            img.load()
            img = ImageOps.exif_transpose(img)
    except PhotoError:
        raise
    except Image.DecompressionBombError as exc:
        raise PhotoError(path, "too large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise PhotoError(path, "not an image", "the file's content is not a known image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise PhotoError(path, reason, str(exc)) from exc

    full_w, full_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    pixels = _to_rgb(img, str(path))
    if max_side and max(pixels.shape[:2]) > max_side:
        factor = max_side / max(pixels.shape[:2])
        size = (max(1, round(pixels.shape[1] * factor)), max(1, round(pixels.shape[0] * factor)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    scale = full_w / pixels.shape[1]
    return Photo(str(path), np.ascontiguousarray(pixels), (full_w, full_h), scale,
                 original_mode, orientation not in (1, None), frames)


def load_folder(folder: str | Path, max_side: int | None = None,
                max_pixels: int = 150_000_000) -> tuple[list[Photo], list[PhotoError]]:
    """Every photo of ``folder`` that decodes, and a PhotoError for each one that does not."""
    loaded, errors = [], []
    for path in list_photos(folder):
        try:
            loaded.append(load_photo(path, max_side=max_side, max_pixels=max_pixels))
        except PhotoError as exc:
            log.warning("skipped %s", exc)
            errors.append(exc)
    return loaded, errors
