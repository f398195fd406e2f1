"""Single-file checkpoints: the config folder a family's files are read with (the JSONs
shipped in ``configs/<family>`` plus tokenizers rebuilt offline, so no model hub is
contacted), and writing the original (LDM) layout that ComfyUI's CheckpointLoader,
A1111/Forge and kohya read."""
from __future__ import annotations

from pathlib import Path

from ..core.paths import cache_root

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def family_config_dir(family, real: bool = True) -> Path:
    """A complete diffusers config folder for ``family`` (a Family), made once in the cache."""
    import shutil

    source = CONFIGS / family.name
    if not source.is_dir():
        raise ValueError(f"family: no shipped configs for '{family.name}'")
    target = cache_root() / "configs" / family.name
    marker = target / ".complete"  # written last: a half-made folder is made again
    if not marker.is_file():
        shutil.copytree(source, target, dirs_exist_ok=True)
        family.write_tokenizers(target, real=real)
        marker.write_text(family.name)
    return target


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"base_model: '{path}' is not a .safetensors file; convert pickled "
                         f"checkpoints (.ckpt/.pt) to safetensors first (they can run code when loaded)")


def save_single_file(path: str | Path, unet, vae, text_encoder, metadata: dict[str, str] | None = None,
                     dtype=None, text_encoder_2=None) -> Path:
    """Write an SD1.x model (an SDXL one with ``text_encoder_2``) in the original (LDM)
    single-file layout."""
    import torch
    from safetensors.torch import save_file

    from .keys.ldm import components_to_ldm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = components_to_ldm(unet, vae, text_encoder, dtype or torch.float16, text_encoder_2)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    tmp.replace(path)
    return path
