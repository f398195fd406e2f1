"""Checking an image's provenance: Persona's watermark and its payload, C2PA credentials and
whether they are intact, and Persona's record in the metadata (``persona verify``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .payload import Payload
from .record import METADATA_KEY
from .watermark import METHOD, bit_agreement, detect


def read_record(image: Image.Image) -> dict | None:
    raw = image.info.get(METADATA_KEY) or image.info.get("comment")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        data = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and str(data.get("generator", "")).startswith("Persona") else None


def verify(path: str | Path) -> dict:
    """``status``: 'ok' (Persona's provenance found and any credentials intact), 'missing'
    (neither a watermark nor a record), 'invalid' (credentials present but broken) or
    'unreadable'."""
    from .credentials import read as read_credentials

    path = Path(path)
    if not path.is_file():
        return {"file": str(path), "status": "unreadable", "reason": "no such file"}
    credentials = read_credentials(path)
    try:
        with Image.open(path) as im:
            record = read_record(im)
            pixels = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if credentials.get("present"):  # signed, then damaged so that it no longer decodes
            return {"file": str(path), "status": "invalid", "reason": f"the image does not decode ({exc})",
                    "watermark": {"found": False}, "credentials": credentials, "record": None}
        return {"file": str(path), "status": "unreadable", "reason": str(exc)}
    made = (record or {}).get("watermark") or {}
    # an image whose record says it was marked by RivaGAN carries no older DWT-DCT mark
    reading = detect(pixels, legacy=made.get("method") != METHOD)
    watermark = reading.to_json()
    if record and made.get("embedded"):
        expected = Payload((record.get("lora") or {}).get("sha256", ""), int(record.get("seed") or 0))
        watermark["bit_agreement"] = round(bit_agreement(reading, expected), 4)
        if not reading.found and record["watermark"].get("holds") is False:  # known when it was made
            watermark["reason"] = record["watermark"]["reason"]
    if credentials.get("present") and not credentials.get("valid"):
        status = "invalid"
    elif reading.found or record:
        status = "ok"
    else:
        status = "missing"
    return {"file": str(path), "status": status, "watermark": watermark, "credentials": credentials,
            "record": record}
