"""The invisible watermark: Persona's payload (``payload``) in every image it makes, and the
reading ``persona verify`` reports.

**The method**, chosen by measurement (``bench/watermark_robustness.py``; its table is in
docs/benchmarks.md): RivaGAN, the learned 32-bit watermark that ``invisible-watermark`` ships
as ONNX networks (``rivagan``). Where the earlier DWT-DCT mark was lost to JPEG q90 and a 10 %
crop, RivaGAN's is found after JPEG q75 and q50, resizing to half and back, a 10 % crop,
brightness +/-20 % and a screenshot-like PNG round trip. It needs a shorter side of
:data:`rivagan.MIN_SIDE` px; smaller images are left unmarked and their record says so.

**Found** means: the 16 pack-id bits read back with at most :data:`MAX_PACK_ID_ERRORS` wrong.
An image that carries no mark passes that test by chance with probability
:data:`CHANCE_FALSE_POSITIVE` if its bits were random; the rate measured on unmarked photos is
:data:`MEASURED_FALSE_POSITIVE` (the benchmark reports both). Images made before RivaGAN
carry a 48-bit DWT-DCT mark; it is read when no RivaGAN mark is found, and found only when its
8-bit pack id reads back exactly (by chance 1 in 256 random images).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from ..core.deps import require
from . import rivagan
from .payload import BITS, LEGACY_BITS, PACK_ID_BITS, Payload, agreement

METHOD = "RivaGAN (invisible-watermark's ONNX networks)"
LEGACY_METHOD = "invisible-watermark dwtDct"
# every pack-id bit must read back: the decoder leans towards some patterns on natural images
# (with 2 errors allowed, 4 of 250 unmarked photos read as marked; with none, 0 of 550), and a
# marked image after JPEG q50, resizing or cropping still reads it whole (docs/benchmarks.md)
MAX_PACK_ID_ERRORS = 0
CHANCE_FALSE_POSITIVE = sum(comb(PACK_ID_BITS, k) for k in range(MAX_PACK_ID_ERRORS + 1)) / 2 ** PACK_ID_BITS
# measured by bench/watermark_robustness.py on unmarked photos (crops and scales of the
# packaged ones, and noise): false positives / images
MEASURED_FALSE_POSITIVE = (0, 250)
LEGACY_MIN_PIXELS = 256 * 256


class WatermarkTooSmall(ValueError):
    pass


def too_small_reason(image: np.ndarray) -> str:
    h, w = image.shape[:2]
    return (f"too small to carry a watermark: {w}x{h} px (the watermark needs a shorter side of at least "
            f"{rivagan.MIN_SIDE} px)")


STRENGTHS = (1.0, 2.0, 3.0)  # tried in turn until the mark reads back whole


@dataclass
class Embedding:
    image: np.ndarray
    bits_read_back: int  # of the 32, read right after embedding
    pack_id_errors: int
    strength: float

    @property
    def holds(self) -> bool:
        """Whether the mark reads back as found from the image it was embedded in."""
        return self.pack_id_errors <= MAX_PACK_ID_ERRORS

    def to_json(self, payload: Payload) -> dict:
        out = {"embedded": True, "method": METHOD, "payload": payload.to_json(), "strength": self.strength,
               "read_back": f"{self.bits_read_back}/{BITS} bits", "holds": self.holds}
        if not self.holds:
            out["reason"] = (f"this image's content (noise-like, flat or clipped colour) does not hold the mark: "
                             f"{self.bits_read_back} of {BITS} bits read back right after embedding")
        return out


CHECK_JPEG_QUALITY = 50  # the embedding is checked through this re-encoding, the harshest one measured
CHECK_CROP = 0.05  # and a crop of this share off each side


def _stressed(image: np.ndarray) -> np.ndarray:
    """``image`` cropped by :data:`CHECK_CROP` on each side and re-encoded as JPEG at
    :data:`CHECK_JPEG_QUALITY`: a mark read back from this survives each alone."""
    import io

    from PIL import Image

    h, w = image.shape[:2]
    dy, dx = int(h * CHECK_CROP), int(w * CHECK_CROP)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[dy:h - dy, dx:w - dx])).save(buf, "JPEG", quality=CHECK_JPEG_QUALITY)
    return np.asarray(Image.open(buf).convert("RGB"))


def embed_checked(image: np.ndarray, payload: Payload) -> Embedding:
    """``image`` (uint8 RGB) with the payload embedded, checked by reading it back, as saved and
    after a crop and a JPEG q50 re-encoding (:func:`_stressed`): content that holds the mark poorly gets a stronger one, up to
    :data:`STRENGTHS`' last (about 33 dB PSNR, on content where it does not show); the first
    strength that passes both, else the best read-back, is kept and reported."""
    h, w = image.shape[:2]
    if rivagan.too_small(h, w):
        raise WatermarkTooSmall(too_small_reason(image))
    bits = payload.bits()
    best, best_key = None, None
    for strength in STRENGTHS:
        marked = rivagan.embed(image, bits, strength)
        read = read_bits(marked)
        agreeing = agreement(read, bits)
        survives = agreeing == len(bits) and \
            Payload.from_bits(read_bits(_stressed(marked)))[1] <= MAX_PACK_ID_ERRORS
        key = (survives, agreeing)
        if best_key is None or key > best_key:
            best, best_key = Embedding(marked, agreeing, Payload.from_bits(read)[1], strength), key
        if survives:
            break
    return best


def embed(image: np.ndarray, payload: Payload) -> np.ndarray:
    """``image`` with the payload embedded (:func:`embed_checked`)."""
    return embed_checked(image, payload).image


@dataclass
class Reading:
    found: bool
    payload: Payload | None
    pack_id_errors: int
    method: str = ""
    reason: str = ""
    too_small: bool = False
    bits: list[int] | None = None  # as read (None: nothing could be read)
    legacy: bool = False

    @property
    def pack_id_agreement(self) -> str:
        width = 8 if self.legacy else PACK_ID_BITS
        return f"{width - self.pack_id_errors}/{width}"

    def to_json(self) -> dict:
        out = {"found": self.found, "method": self.method,
               "payload": self.payload.to_json(self.legacy) if self.payload else None}
        if self.bits is not None:
            out.update(pack_id_bits_agreeing=self.pack_id_agreement, pack_id_bit_errors=self.pack_id_errors,
                       false_positive_rate=false_positive_rate(self.legacy))
        if self.too_small:
            out["too_small"] = True
        if self.reason:
            out["reason"] = self.reason
        return out


def false_positive_rate(legacy: bool = False) -> dict:
    """What a 'found' on an image without a mark would take: by chance, and as measured."""
    if legacy:
        return {"by_chance": 1 / 256, "note": "a DWT-DCT mark from before RivaGAN: its 8-bit pack id read exactly"}
    found, images = MEASURED_FALSE_POSITIVE
    return {"by_chance": round(CHANCE_FALSE_POSITIVE, 5), "measured": f"{found} of {images} unmarked images",
            "rule": f"at most {MAX_PACK_ID_ERRORS} of the {PACK_ID_BITS} pack-id bits wrong"}


def read_bits(image: np.ndarray) -> list[int]:
    """The 32 RivaGAN bits as read from ``image``."""
    return [int(s > 0) for s in rivagan.read(image)]


def _legacy_bits(image: np.ndarray) -> list[int]:
    imwatermark = require("imwatermark", "Reading older (DWT-DCT) watermarks")
    decoder = imwatermark.WatermarkDecoder("bits", LEGACY_BITS)
    return [int(b) for b in decoder.decode(np.ascontiguousarray(image[:, :, ::-1]), "dwtDct")]


def detect(image: np.ndarray, legacy: bool = True) -> Reading:
    """Persona's watermark in ``image``: RivaGAN's, else (with ``legacy``) an older DWT-DCT one.
    ``legacy=False`` where the image is known to be newer (its record names RivaGAN): a chance
    match of the legacy mark's 8-bit pack id (1 in 256) cannot then read as found."""
    h, w = image.shape[:2]
    if rivagan.too_small(h, w):
        return Reading(False, None, PACK_ID_BITS, METHOD, too_small_reason(image), too_small=True)
    bits = read_bits(image)
    payload, errors = Payload.from_bits(bits)
    if errors <= MAX_PACK_ID_ERRORS:
        return Reading(True, payload, errors, METHOD, bits=bits)
    if legacy and h * w >= LEGACY_MIN_PIXELS:
        old = _legacy_bits(image)
        legacy_payload, legacy_errors = Payload.from_legacy_bits(old)
        if legacy_errors == 0:
            return Reading(True, legacy_payload, 0, LEGACY_METHOD, bits=old, legacy=True)
    return Reading(False, None, errors, METHOD, bits=bits)


def bit_agreement(reading: Reading, expected: Payload) -> float:
    """The share of the payload's bits that ``reading`` read as ``expected`` holds them."""
    if reading.bits is None:
        return 0.0
    want = expected.legacy_bits() if reading.legacy else expected.bits()
    return agreement(reading.bits, want) / len(want)


def accuracy(image: np.ndarray, expected: Payload) -> float:
    """Share of the 32 payload bits read back correctly from ``image``."""
    return agreement(read_bits(image), expected.bits()) / BITS


def mark(image: np.ndarray, payload: Payload) -> np.ndarray:
    """``image`` with the payload, or unchanged when it is too small to carry one."""
    try:
        return embed(image, payload)
    except WatermarkTooSmall:
        return image


def enabled() -> bool:
    """False when the operator switched the watermark off (``PERSONA_WATERMARK=0``)."""
    from .record import ProvenanceConfig

    return ProvenanceConfig.from_env().watermark


def mark_generated(image: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """A freshly generated image with Persona's payload for its seed (unless switched off), and
    a line that says what it carries (a node shows it: its IMAGE output has no record)."""
    if not enabled():
        return image, "watermark: switched off"
    payload = Payload("", int(seed))
    try:
        checked = embed_checked(image, payload)
    except WatermarkTooSmall as exc:
        return image, f"watermark: none ({exc})"
    if checked.holds:
        return checked.image, f"watermark held ({checked.bits_read_back}/{BITS} bits read back)"
    return checked.image, f"watermark NOT held: {checked.to_json(payload)['reason']}"


def carry(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """``edited`` (an enhancement of ``source``) marked with the payload ``source`` carries,
    or with Persona's pack id alone when it carries none (unless switched off)."""
    if edited is source or not enabled() or rivagan.too_small(*source.shape[:2]):
        return edited
    return mark(edited, detect(source).payload or Payload())
