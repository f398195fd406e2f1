"""The files a run leaves: the LoRA with kohya keys and metadata (every tool loads these:
ComfyUI, A1111/Forge, kohya, diffusers), the LoRA in diffusers' own format, and for a full
DreamBooth a diffusers folder plus a single-file checkpoint. The key layout of each family
is the family's (``models.families``); writing is shared."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ...models.families import get_family


def save_kohya_lora(path: str | Path, denoiser_state: dict, te_states: list[dict] | None, alpha: float,
                    metadata: dict[str, object], dtype: torch.dtype = torch.float16, family: str = "sd15",
                    model=None) -> Path:
    from safetensors.torch import save_file

    tensors = get_family(family).kohya_tensors(denoiser_state, [s for s in (te_states or [])], alpha, model)
    tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.endswith(".alpha") else v)
               for k, v in tensors.items()}
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def save_peft_lora(folder: str | Path, denoiser, text_encoders=(), family: str = "sd15") -> Path:
    """diffusers' own format (``pytorch_lora_weights.safetensors``) for diffusers users."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    get_family(family).save_diffusers_lora(folder, get_peft_model_state_dict(denoiser),
                                           [get_peft_model_state_dict(t) for t in text_encoders])
    return folder


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def export_dreambooth(run_dir: Path, comps, unet, text_encoder, metadata: dict[str, str],
                      name: str = "model") -> tuple[Path, Path]:
    """A fine-tuned SD1.x model as a diffusers folder (``<name>/``) and a single-file
    checkpoint (``<name>.safetensors``, the layout ComfyUI's CheckpointLoader reads)."""
    from ...models.build import save_text_encoder
    from ...models.single_file import save_single_file

    folder = Path(run_dir) / name
    for module in (unet, text_encoder, comps.vae):  # frozen parts may be in half precision
        if any(p.dtype != torch.float32 for p in module.parameters()):
            module.to(torch.float32)
    unet.save_pretrained(folder / "unet")
    save_text_encoder(text_encoder, folder / "text_encoder")
    comps.vae.save_pretrained(folder / "vae")
    comps.tokenizer.save_pretrained(folder / "tokenizer")
    comps.scheduler.save_pretrained(folder / "scheduler")
    pipeline_class, parts = get_family(comps.family).pipeline_index
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": pipeline_class, **parts, "scheduler": ["diffusers", type(comps.scheduler).__name__]}, indent=2))
    meta = {k: v for k, v in metadata.items() if not k.startswith("ss_network")}
    checkpoint = save_single_file(Path(run_dir) / f"{name}.safetensors", unet, comps.vae, text_encoder, meta)
    return folder, checkpoint
