"""Where Persona keeps what it makes once and reuses: one cache root for every cache.

``$PERSONA_CACHE`` or ``~/.cache/comfyui-persona``: model configs with rebuilt tokenizers,
tokenizers of random-weight models, memory plans; pretrained weights live under its
``weights/`` folder unless ``$PERSONA_WEIGHTS`` says otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("PERSONA_CACHE", Path.home() / ".cache" / "comfyui-persona"))


def weights_dir() -> Path:
    """The Persona weights cache (``$PERSONA_WEIGHTS``, else ``<cache root>/weights``)."""
    return Path(os.environ.get("PERSONA_WEIGHTS", cache_root() / "weights"))
