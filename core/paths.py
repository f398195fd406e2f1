"""Where Persona keeps what it makes once and reuses: one cache root for every cache.

``$PERSONA_CACHE`` or ``~/.cache/comfyui-persona``: model configs with rebuilt tokenizers,
tokenizers of random-weight models, memory plans; pretrained weights live under its
``weights/`` folder unless ``$PERSONA_WEIGHTS`` says otherwise. Inside ComfyUI the nodes set
``$PERSONA_CACHE`` to a folder in ComfyUI's user directory (unless the operator set it), so a
server writes nothing under its user's home; weights already in the home cache are still found.
"""
from __future__ import annotations

import os
from pathlib import Path


def home_cache() -> Path:
    return Path.home() / ".cache" / "comfyui-persona"


def cache_root() -> Path:
    return Path(os.environ.get("PERSONA_CACHE", home_cache()))


def weights_dir() -> Path:
    """The Persona weights cache (``$PERSONA_WEIGHTS``, else ``<cache root>/weights``, else the
    home cache's when only that one exists)."""
    if "PERSONA_WEIGHTS" in os.environ:
        return Path(os.environ["PERSONA_WEIGHTS"])
    own, home = cache_root() / "weights", home_cache() / "weights"
    return home if not own.exists() and home.exists() else own
