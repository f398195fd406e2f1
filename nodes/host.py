"""The few things nodes need from the ComfyUI host, imported lazily so the node modules
also import (and their classes can be inspected) outside ComfyUI."""
from __future__ import annotations

import os
from pathlib import Path


def output_dir() -> Path:
    """ComfyUI's output directory (or ./output outside ComfyUI)."""
    try:
        import folder_paths  # ComfyUI module

        return Path(folder_paths.get_output_directory())
    except ImportError:
        return Path(os.getcwd()) / "output"


def input_dir() -> Path:
    try:
        import folder_paths

        return Path(folder_paths.get_input_directory())
    except ImportError:
        return Path(os.getcwd()) / "input"


def resolve_user_path(path: str, base: Path) -> Path:
    """A user-typed folder: absolute as given, relative to ``base`` otherwise."""
    p = Path(os.path.expanduser(path.strip()))
    return p if p.is_absolute() else base / p


class Progress:
    """ComfyUI's progress bar for the running node (a no-op outside ComfyUI)."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total)
        except ImportError:
            self._bar = None

    def update(self, done: int, total: int | None = None, _label: str = "") -> None:
        if self._bar is not None:
            self._bar.update_absolute(done, total or self.total)


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed cancel."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """True when the user pressed cancel (without clearing the request)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return False
    return bool(mm.processing_interrupted())
