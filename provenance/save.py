"""The one way Persona writes an image it generated or enhanced: the invisible watermark
(unless switched off, which the record then says), Persona's record in the file's metadata,
and C2PA content credentials when a signing certificate is configured (a log line says when
they are not signed). Used by ``persona generate``, the demo and the Persona Save Image node.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .record import METADATA_KEY, ProvenanceConfig, Record
from .watermark import WatermarkTooSmall, embed_checked

log = logging.getLogger(__name__)


def save_image(image: np.ndarray, path: str | Path, record: Record,
               cfg: ProvenanceConfig | None = None) -> dict:
    """Write ``image`` (uint8 RGB) to ``path`` (.png, or .jpg/.jpeg) with its provenance;
    returns the record as written."""
    cfg = cfg or ProvenanceConfig.from_env()
    path = Path(path)
    payload = record.payload()
    if not cfg.watermark:
        watermark = {"embedded": False, "reason": "switched off by the user (watermark: false)"}
        log.warning("%s: saved WITHOUT the invisible watermark (switched off)", path.name)
    else:
        try:
            embedding = embed_checked(image, payload)
            image, watermark = embedding.image, embedding.to_json(payload)
            if not embedding.holds:
                log.warning("%s: %s", path.name, watermark["reason"])
        except WatermarkTooSmall as exc:
            watermark = {"embedded": False, "too_small": True, "reason": str(exc)}
            log.info("%s: no watermark (%s)", path.name, exc)
    if cfg.signs:
        credentials = {"signed": True, "standard": "C2PA", "alg": cfg.c2pa_alg}
    else:
        credentials = {"signed": False, "reason": "no signing certificate configured (c2pa_cert/c2pa_key or "
                                                  "PERSONA_C2PA_CERT/PERSONA_C2PA_KEY)"}
        log.info("%s: content credentials not signed: no certificate configured", path.name)
    data = record.to_json(watermark, credentials)
    text = json.dumps(data, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(np.ascontiguousarray(image))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # no chroma subsampling: the watermark lives in the colour channels
        pil.save(path, quality=95, subsampling=0, comment=text.encode("utf-8"))
    else:
        info = PngImagePlugin.PngInfo()
        info.add_itxt(METADATA_KEY, text)
        pil.save(path, pnginfo=info)
    if cfg.signs:
        from .credentials import sign

        sign(path, data, cfg.c2pa_cert, cfg.c2pa_key, cfg.c2pa_alg)
    return data


def save_numbered(images, folder: Path, prefix: str, suffix: str, record: Record,
                  cfg: ProvenanceConfig | None = None) -> list[tuple[str, dict]]:
    """Save ``images`` as ``<prefix>_NNNNN<suffix>`` in ``folder``, numbered after the files
    already there (as ComfyUI's own savers do); returns (file name, record) per image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.stem.rsplit("_", 1)[1]) for p in folder.glob(f"{prefix}_*{suffix}")
             if p.stem.rsplit("_", 1)[1].isdigit()]
    start = max(taken, default=0) + 1
    out = []
    for k, image in enumerate(images):
        name = f"{prefix}_{start + k:05d}{suffix}"
        out.append((name, save_image(image, folder / name, record, cfg)))
    return out
