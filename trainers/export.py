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


def peft_to_kohya(state: dict[str, torch.Tensor], prefix: str, alpha: float,
                  rename=None) -> dict[str, torch.Tensor]:
    """peft LoRA tensors of one model -> kohya tensors with ``prefix`` ('lora_unet' or 'lora_te');
    ``rename`` maps a module path first (SDXL: diffusers -> original layout)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _PEFT_KEY.match(key)
        if not m:
            continue
        module, which = m.groups()
        module = _classic_name(rename(module) if rename else module, prefix)
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


def kohya_tensors(family: str, unet_state: dict, te_states: list[dict], alpha: float, model=None,
                  rank: int | None = None) -> dict[str, torch.Tensor]:
    """Every family's kohya layout: SD1.x ``lora_unet_<diffusers path>`` + ``lora_te_``; SDXL
    ``lora_unet_<original (LDM) path>`` + ``lora_te1_``/``lora_te2_`` (as kohya's sd-scripts
    write them); FLUX ``lora_unet_<BFL path>`` with fused qkv/linear1 layers."""
    if family == "flux":
        from .flux_keys import kohya_flux_lora

        pairs: dict[str, list] = {}
        for key, tensor in unet_state.items():
            m = _PEFT_KEY.match(key)
            if m:
                pairs.setdefault(m.group(1), [None, None])[0 if m.group(2) == "A" else 1] = tensor.detach()
        rows = {n: mod.out_features for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
        rows.update({n.removesuffix(".base_layer"): r for n, r in rows.items()})
        r = rank or next(iter(pairs.values()))[0].shape[0]
        return kohya_flux_lora({k: tuple(v) for k, v in pairs.items()}, rows, dict(model.config), alpha, r)
    if family == "sdxl":
        from .ldm_keys import ldm_module_name

        tensors = peft_to_kohya(unet_state, "lora_unet", alpha,
                                rename=lambda n: ldm_module_name(n, model.config))
        prefixes = ["lora_te1", "lora_te2"]
    else:
        tensors = peft_to_kohya(unet_state, "lora_unet", alpha)
        prefixes = ["lora_te"]
    for prefix, state in zip(prefixes, te_states):
        if state:
            tensors.update(peft_to_kohya(state, prefix, alpha))
    return tensors


def save_kohya_lora(path: str | Path, unet_state: dict, te_states: list[dict] | dict | None, alpha: float,
                    metadata: dict[str, object], dtype: torch.dtype = torch.float16, family: str = "sd15",
                    model=None) -> Path:
    from safetensors.torch import save_file

    if isinstance(te_states, dict) or te_states is None:
        te_states = [te_states] if te_states else []
    tensors = kohya_tensors(family, unet_state, te_states, alpha, model)
    tensors = {k: (v.to(dtype) if v.is_floating_point() and not k.endswith(".alpha") else v)
               for k, v in tensors.items()}
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in metadata.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def save_peft_lora(folder: str | Path, unet, text_encoders=None, family: str = "sd15") -> Path:
    """diffusers' own format (``pytorch_lora_weights.safetensors``) for diffusers users."""
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if text_encoders is not None and not isinstance(text_encoders, (list, tuple)):
        text_encoders = [text_encoders]
    tes = [get_peft_model_state_dict(t) for t in (text_encoders or [])]
    layers = get_peft_model_state_dict(unet)
    if family == "flux":
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
    elif family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            folder, unet_lora_layers=layers, text_encoder_lora_layers=tes[0] if tes else None,
            text_encoder_2_lora_layers=tes[1] if len(tes) > 1 else None, safe_serialization=True)
    else:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers,
                                                  text_encoder_lora_layers=tes[0] if tes else None,
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
