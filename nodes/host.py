"""Everything the nodes need from the ComfyUI host, in one module: its folders, model lists,
progress bar, cancel button, sampler and LoRA loader. Imported lazily, so the node modules
also import (and their classes can be inspected) outside ComfyUI; no other module of the
pack imports ComfyUI's ``comfy``, ``nodes`` or ``folder_paths``."""
from __future__ import annotations

import os
from pathlib import Path


def _folder_paths():
    try:
        import folder_paths  # ComfyUI module
    except ImportError:
        return None
    return folder_paths


def output_dir() -> Path:
    """ComfyUI's output directory (or ./output outside ComfyUI)."""
    fp = _folder_paths()
    return Path(fp.get_output_directory()) if fp else Path(os.getcwd()) / "output"


def input_dir() -> Path:
    fp = _folder_paths()
    return Path(fp.get_input_directory()) if fp else Path(os.getcwd()) / "input"


def resolve_user_path(path: str, base: Path) -> Path:
    """A user-typed folder: absolute as given, relative to ``base`` otherwise."""
    p = Path(os.path.expanduser(path.strip()))
    return p if p.is_absolute() else base / p


# --- models ---------------------------------------------------------------------------------

def base_models() -> list[str]:
    """Diffusers folders in models/diffusers (with model_index.json) and .safetensors
    checkpoints in models/checkpoints (empty outside ComfyUI)."""
    fp = _folder_paths()
    if fp is None:
        return []
    try:
        roots = fp.get_folder_paths("diffusers")
        checkpoints = [n for n in fp.get_filename_list("checkpoints") if n.lower().endswith(".safetensors")]
    except KeyError:
        return []
    found = set()
    for root in map(Path, roots):
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if (p / "model_index.json").is_file())
    return sorted(found) + sorted(checkpoints)


def base_model_path(name: str) -> Path:
    """The path of a name from :func:`base_models`."""
    import folder_paths

    if name.lower().endswith(".safetensors"):
        path = folder_paths.get_full_path("checkpoints", name)
        if path:
            return Path(path)
        raise FileNotFoundError(f"base_model: checkpoint '{name}' is not in models/checkpoints")
    for root in folder_paths.get_folder_paths("diffusers"):
        candidate = Path(root) / name
        if (candidate / "model_index.json").is_file():
            return candidate
    raise FileNotFoundError(f"base_model: '{name}' is not a diffusers model folder in "
                            f"{folder_paths.get_folder_paths('diffusers')}")


def loras_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def free_models() -> None:
    """Unload ComfyUI's models and empty its cache (before training takes the GPU)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.unload_all_models()
    mm.soft_empty_cache()


def apply_lora(model, clip, path: str, strength_model: float, strength_clip: float):
    """ComfyUI's own LoRA code: (model, clip) with the LoRA file applied."""
    import comfy.sd
    import comfy.utils

    tensors = comfy.utils.load_torch_file(path, safe_load=True)
    return comfy.sd.load_lora_for_models(model, clip, tensors, strength_model, strength_clip)


# --- sampling -------------------------------------------------------------------------------

def samplers() -> tuple[list[str], list[str]]:
    """ComfyUI's sampler and scheduler names (a placeholder outside ComfyUI)."""
    try:
        import comfy.samplers
    except ImportError:  # outside ComfyUI: the class still loads
        return ["euler"], ["normal"]
    return comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


def ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0) -> dict:
    """ComfyUI's KSampler: the sampled LATENT."""
    import nodes as comfy_nodes  # ComfyUI's own nodes module (not this pack's)

    return comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent, denoise=denoise)[0]


# --- progress and cancel --------------------------------------------------------------------

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
