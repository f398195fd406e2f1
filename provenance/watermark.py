"""The invisible watermark: the payload embedded with ``invisible-watermark``'s DWT-DCT
method (no weights needed) into the luminance of the image, and read back.

The library works on images of at least 256x256 pixels; smaller images are left as they are
and the record says so. Robustness per attack is measured by ``bench/watermark_robustness.py``
(table in docs/benchmarks.md)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.deps import require
from .payload import BITS, Payload, bit_accuracy

MIN_PIXELS = 256 * 256
METHOD = "dwtDct"


class WatermarkTooSmall(ValueError):
    pass


def _library():
    return require("imwatermark", "The invisible watermark")


def embed(image: np.ndarray, payload: Payload) -> np.ndarray:
    """``image`` (uint8 RGB) with the payload embedded."""
    h, w = image.shape[:2]
    if h * w < MIN_PIXELS:
        raise WatermarkTooSmall(f"image: {w}x{h} px is smaller than the watermark's minimum of 256x256 px")
    encoder = _library().WatermarkEncoder()
    encoder.set_watermark("bits", payload.bits())
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    return np.ascontiguousarray(encoder.encode(bgr, METHOD)[:, :, ::-1])


def read_bits(image: np.ndarray) -> list[int]:
    decoder = _library().WatermarkDecoder("bits", BITS)
    return [int(b) for b in decoder.decode(np.ascontiguousarray(image[:, :, ::-1]), METHOD)]


@dataclass
class Reading:
    found: bool
    payload: Payload | None
    pack_id_errors: int
    reason: str = ""
    bits: list[int] | None = None  # the 48 bits as read (None: the image is too small)

    def to_json(self) -> dict:
        return {"found": self.found, "payload": self.payload.to_json() if self.payload else None,
                "pack_id_bit_errors": self.pack_id_errors, **({"reason": self.reason} if self.reason else {})}


def detect(image: np.ndarray, max_pack_id_errors: int = 1) -> Reading:
    """Persona's watermark is found when the pack id reads back with at most
    ``max_pack_id_errors`` of its 8 bits wrong (by chance: 9 in 256 images)."""
    h, w = image.shape[:2]
    if h * w < MIN_PIXELS:
        return Reading(False, None, 8, f"{w}x{h} px: below the watermark's minimum of 256x256 px")
    bits = read_bits(image)
    payload, errors = Payload.from_bits(bits)
    found = errors <= max_pack_id_errors
    return Reading(found, payload if found else None, errors, bits=bits)


def accuracy(image: np.ndarray, expected: Payload) -> float:
    """Fraction of the 48 payload bits read back correctly from ``image``."""
    return bit_accuracy(read_bits(image), expected)


def mark(image: np.ndarray, payload: Payload) -> np.ndarray:
    """``image`` with the payload, or unchanged when it is smaller than the watermark allows."""
    try:
        return embed(image, payload)
    except WatermarkTooSmall:
        return image


def enabled() -> bool:
    """False when the operator switched the watermark off (``PERSONA_WATERMARK=0``)."""
    from .record import ProvenanceConfig

    return ProvenanceConfig.from_env().watermark


def mark_generated(image: np.ndarray, seed: int) -> np.ndarray:
    """A freshly generated image with Persona's payload for its seed (unless switched off)."""
    return mark(image, Payload("", int(seed))) if enabled() else image


def carry(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """``edited`` (an enhancement of ``source``) marked with the payload ``source`` carries,
    or with Persona's pack id alone when it carries none (unless switched off)."""
    if edited is source or not enabled() or source.shape[0] * source.shape[1] < MIN_PIXELS:
        return edited
    return mark(edited, detect(source).payload or Payload())
