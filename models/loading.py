"""Loading a base model: the family named in the config reads a diffusers folder, a single
file, or (FLUX) ComfyUI's separate files."""
from __future__ import annotations

from pathlib import Path

from .components import Components
from .families import get_family


def load_components(family: str, base_model: str | Path, defer_denoiser: bool = False, **files) -> Components:
    """The components of ``family`` from a diffusers folder or single file(s) (FLUX also takes
    its separate files as ``clip_l=``, ``t5=`` and ``vae=``, ComfyUI's models/ layout);
    ``defer_denoiser``: see ``Family.load``."""
    return get_family(family).load(Path(base_model), defer_denoiser=defer_denoiser, **files)


def load_single_file(path: str | Path, family: str = "sd15", config_dir: str | Path | None = None) -> Components:
    """A single-file checkpoint (what ComfyUI users keep in models/checkpoints), read with the
    config JSONs shipped in the repository (or ``config_dir``): no model hub is contacted."""
    comps = get_family(family).load_single_file(Path(path), config_dir=config_dir)
    comps.load_denoiser()
    return comps
