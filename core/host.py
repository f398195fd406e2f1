"""The one probe of the ComfyUI host outside ``nodes/``: where ComfyUI keeps its models and
its own files, when Persona runs inside it. Outside ComfyUI every answer is None, and the
headless code looks only in its own places.
"""
from __future__ import annotations

from pathlib import Path


def _folder_paths():
    try:
        import folder_paths  # ComfyUI's module; absent when Persona runs headless
    except ImportError:
        return None
    return folder_paths


def comfy_models_dir() -> Path | None:
    """ComfyUI's ``models/`` folder, or None outside ComfyUI."""
    fp = _folder_paths()
    return Path(fp.models_dir) if fp is not None else None


def comfy_base_dir() -> Path | None:
    """The ComfyUI installation folder (its ``comfy/`` package lives there), or None."""
    fp = _folder_paths()
    return Path(fp.base_path) if fp is not None else None
