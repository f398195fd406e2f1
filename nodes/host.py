"""Everything the nodes need from the ComfyUI host, in one module: its folders, model lists,
progress bar, cancel button, sampler and LoRA loader. Imported lazily, so the node modules
also import (and their classes can be inspected) outside ComfyUI; no other module of the
pack imports ComfyUI's ``comfy``, ``nodes`` or ``folder_paths``."""
from __future__ import annotations

import os
import re
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


def models_dir() -> Path:
    """ComfyUI's models folder (or ./models outside ComfyUI)."""
    fp = _folder_paths()
    return Path(fp.models_dir) if fp else Path(os.getcwd()) / "models"


def input_dir() -> Path:
    fp = _folder_paths()
    return Path(fp.get_input_directory()) if fp else Path(os.getcwd()) / "input"


def keep_caches_in_comfyui() -> None:
    """Persona's caches (memory plans, step FLOPs, rebuilt tokenizers) in ComfyUI's user
    folder, not its user's home, unless the operator set ``PERSONA_CACHE``; the training
    children inherit it."""
    fp = _folder_paths()
    if fp is None or "PERSONA_CACHE" in os.environ:
        return
    user = fp.get_user_directory() if hasattr(fp, "get_user_directory") else os.path.join(fp.base_path, "user")
    os.environ["PERSONA_CACHE"] = str(Path(user) / "persona" / "cache")


# --- what a queued graph may name ---------------------------------------------------------
# A server started with --listen takes graphs from anyone who can reach it: path inputs stay
# inside ComfyUI's input, output and model folders, and names are plain names.

ALLOW_ANY_PATH_ENV = "PERSONA_ALLOW_ANY_PATH"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def safe_name(value: str, field: str) -> str:
    """A name that becomes one file or folder name (dataset, LoRA, report, run)."""
    name = str(value).strip()
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{field}: a plain name is needed (letters, digits, '_', '-', '.'; at most 100 "
                         f"characters; no path), got {_shown(str(value))}")
    return name


def any_path_allowed() -> bool:
    """The operator of a private, local server may lift the confinement."""
    return os.environ.get(ALLOW_ANY_PATH_ENV, "").lower() in ("1", "true", "yes", "on")


def allowed_roots() -> dict[str, Path]:
    """ComfyUI's folders a graph's paths may lead into, by the label messages use: input,
    output, models, and every model folder configured elsewhere (extra_model_paths.yaml)."""
    fp = _folder_paths()
    roots = {"input": input_dir(), "output": output_dir()}
    if fp is not None:
        roots["models"] = Path(fp.models_dir)
        for kind in ("checkpoints", "diffusers", "loras", "vae", "clip", "text_encoders", "unet",
                     "diffusion_models", "LLM"):
            try:
                folders = fp.get_folder_paths(kind)
            except KeyError:
                continue
            for k, folder in enumerate(folders):
                roots.setdefault(f"models/{kind}" + (f"[{k}]" if k else ""), Path(folder))
    return roots


def confinement():
    """The confinement a node runs in (``core.confine``): ComfyUI's folders as roots, and its
    own and the pack's locations named by label in messages; none outside ComfyUI or when the
    operator allowed any path."""
    from contextlib import nullcontext

    from ..core.confine import confined_to

    if _folder_paths() is None or any_path_allowed():
        return nullcontext()
    import folder_paths

    pack = Path(__file__).resolve().parent.parent
    return confined_to(allowed_roots(), {str(Path(folder_paths.base_path).resolve()): "ComfyUI",
                                         str(pack): "persona"})


def confined_path(value: str, field: str, base: Path) -> Path:
    """A user-typed folder or file, relative to ``base`` (ComfyUI's input folder). After
    symlinks are resolved it must lie inside ComfyUI's input, output or model folders;
    absolute paths, ``~`` and ``..`` that lead out are refused unless the operator sets
    ``PERSONA_ALLOW_ANY_PATH=1`` (a private, local server). Outside ComfyUI (node classes
    called from Python) the path is the caller's own and is taken as given."""
    from ..core.confine import relative

    return relative(value, field, base)


def datasets_folder() -> Path:
    """Where Persona Build Dataset writes datasets."""
    return output_dir() / "persona" / "datasets"


def lora_folders() -> list[Path]:
    """Where a PERSONA_LORA's file may lie: ComfyUI's LoRA folders and Persona's output."""
    fp = _folder_paths()
    return ([Path(p) for p in fp.get_folder_paths("loras")] if fp else []) + [output_dir() / "persona"]


# --- models ---------------------------------------------------------------------------------

# ComfyUI's folder of each kind of model file, by its current name first (the 2024 releases
# called diffusion_models 'unet' and text_encoders 'clip')
FOLDERS = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip"),
           "vae": ("vae",), "checkpoints": ("checkpoints",), "loras": ("loras",)}
DIFFUSION_MODELS = "diffusion_models/"  # how base_models() lists a bare denoiser file (FLUX, Z-Image)


def model_files(kind: str) -> list[str]:
    """The .safetensors files of a kind of FOLDERS, as ComfyUI's loaders list them (empty
    outside ComfyUI)."""
    fp = _folder_paths()
    if fp is None:
        return []
    for name in FOLDERS[kind]:
        try:
            return sorted(n for n in fp.get_filename_list(name) if n.lower().endswith(".safetensors"))
        except KeyError:
            continue
    return []


def model_file_path(kind: str, name: str, field: str) -> Path:
    """The path of a file listed by :func:`model_files`."""
    import folder_paths

    for folder in FOLDERS[kind]:
        try:
            found = folder_paths.get_full_path(folder, name)
        except KeyError:
            continue
        if found:
            return Path(found)
    raise FileNotFoundError(f"{field}: '{name}' is not in ComfyUI's models/{FOLDERS[kind][0]} folder")


def base_models() -> list[str]:
    """Diffusers folders in models/diffusers (with model_index.json), .safetensors checkpoints
    in models/checkpoints, and denoiser files in models/diffusion_models (FLUX, listed as
    ``diffusion_models/<file>``; empty outside ComfyUI)."""
    fp = _folder_paths()
    if fp is None:
        return []
    try:
        roots = fp.get_folder_paths("diffusers")
    except KeyError:
        return []
    found = set()
    for root in map(Path, roots):
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if (p / "model_index.json").is_file())
    return (sorted(found) + model_files("checkpoints")
            + [DIFFUSION_MODELS + n for n in model_files("diffusion_models")])


def base_model_path(name: str) -> Path:
    """The path of a name from :func:`base_models`."""
    import folder_paths

    if name.startswith(DIFFUSION_MODELS):
        return model_file_path("diffusion_models", name[len(DIFFUSION_MODELS):], "base_model")
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


def lora_file_path(name: str) -> Path:
    """A LoRA named as LoraLoader lists it (a path under models/loras); outside the LoRA
    folders it is refused like any other path."""
    fp = _folder_paths()
    if fp is not None:
        found = fp.get_full_path("loras", name.strip())
        if found:
            return Path(found)
        return confined_path(name, "lora_file", Path(fp.get_folder_paths("loras")[0]))
    return confined_path(name, "lora_file", output_dir())


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


def show_text(node_id, text: str) -> None:
    """Show ``text`` on node ``node_id`` in the canvas while it runs (ComfyUI's progress text;
    hosts without it show nothing until the node returns)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if node_id is not None and server is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, str(node_id))
