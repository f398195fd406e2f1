"""LoRA files: kohya-style keys (every tool loads these: ComfyUI, A1111/Forge, kohya,
diffusers) with metadata, plus the diffusers/peft format.

peft's ``lora_A`` is kohya's ``lora_down`` ([rank, in]), ``lora_B`` is ``lora_up``
([out, rank]), and both scale by alpha / rank, so the conversion is a renaming.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(.+?)\.lora_([AB])(?:\.default)?\.weight$")


def _classic_name(module: str, prefix: str) -> str:
    """Text-encoder module paths as in every SD checkpoint: ``text_model.encoder...``
    (recent transformers name CLIPTextModel's modules without the ``text_model.`` level)."""
    if prefix.startswith("lora_te") and not module.startswith("text_model."):
        return f"text_model.{module}"
    return module


def peft_to_kohya(state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """peft LoRA tensors of one model -> kohya tensors with ``prefix`` ('lora_unet' or 'lora_te')."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _PEFT_KEY.match(key)
        if not m:
            continue
        module, which = m.groups()
        module = _classic_name(module, prefix)
        name = f"{prefix}_{module.replace('.', '_')}"
        out[f"{name}.{'lora_down' if which == 'A' else 'lora_up'}.weight"] = tensor.detach().contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def kohya_to_peft(tensors: dict[str, torch.Tensor], prefix: str, module_names: list[str]) -> dict[str, torch.Tensor]:
    """The reverse, given the real module names (underscores are ambiguous otherwise)."""
    by_flat = {f"{prefix}_{_classic_name(n, prefix).replace('.', '_')}": n for n in module_names}
    out = {}
    for key, tensor in tensors.items():
        base, _, rest = key.partition(".")
        if base not in by_flat or rest == "alpha":
            continue
        which = "lora_A" if rest.startswith("lora_down") else "lora_B"
        out[f"{by_flat[base]}.{which}.weight"] = tensor
    return out


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a model carrying a peft adapter (names as in the model)."""
    return {k: v for k, v in model.state_dict().items() if "lora_A" in k or "lora_B" in k}


def save_kohya_lora(path: str | Path, unet_state: dict, te_state: dict | None, alpha: float,
                    metadata: dict[str, object], dtype: torch.dtype = torch.float16) -> Path:
    from safetensors.torch import save_file

    tensors = peft_to_kohya(unet_state, "lora_unet", alpha)
    if te_state:
        tensors.update(peft_to_kohya(te_state, "lora_te", alpha))
    tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.endswith(".alpha") else v)
               for k, v in tensors.items()}
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def save_peft_lora(folder: str | Path, unet, text_encoder=None) -> Path:
    """diffusers' own format (``pytorch_lora_weights.safetensors``) for diffusers users."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet_layers = get_peft_model_state_dict(unet)
    te_layers = get_peft_model_state_dict(text_encoder) if text_encoder is not None else None
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet_layers,
                                              text_encoder_lora_layers=te_layers,
                                              safe_serialization=True)
    return folder


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def export_dreambooth(run_dir: Path, comps, unet, text_encoder, metadata: dict[str, str]
                      ) -> tuple[Path, Path]:
    """A fine-tuned model as a diffusers folder (``model/``) and a single-file checkpoint
    (``model.safetensors``, the layout ComfyUI's CheckpointLoader reads)."""
    import json as _json

    from .models import save_single_file
    from .tiny_model import _classic_clip_keys

    folder = Path(run_dir) / "model"
    for module in (unet, text_encoder, comps.vae):  # frozen parts may be in half precision
        if any(p.dtype != torch.float32 for p in module.parameters()):
            module.to(torch.float32)
    unet.save_pretrained(folder / "unet")
    text_encoder.save_pretrained(folder / "text_encoder")
    _classic_clip_keys(folder / "text_encoder" / "model.safetensors")
    comps.vae.save_pretrained(folder / "vae")
    comps.tokenizer.save_pretrained(folder / "tokenizer")
    comps.scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(_json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
        "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", type(comps.scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    meta = {k: v for k, v in metadata.items() if not k.startswith("ss_network")}
    checkpoint = save_single_file(Path(run_dir) / "model.safetensors", unet, comps.vae, text_encoder, meta)
    return folder, checkpoint
