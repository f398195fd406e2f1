"""A LoRA merged into a base model's frozen weights for the length of a training run: the
de-distillation ("training") adapters trainers use to train on a distilled model such as
Z-Image Turbo. A LoRA trained directly on a distilled model learns to undo the distillation
along with the subject; with the adapter merged, the distillation is already undone in the
frozen weights, the new LoRA learns only the subject, and since the adapter is part of the
base (not of the trained layers) the exported LoRA never contains it: sampled on the
distilled model, it keeps the model's few-step behaviour.

Accepted layouts: diffusers module names (what the denoiser's ``named_modules`` gives) under
``diffusion_model.``, ``transformer.``, ``unet.`` or ``base_model.model.``, with ``lora_A``/
``lora_B`` or ``lora_down``/``lora_up`` weights and an optional ``alpha``.
"""
from __future__ import annotations

from pathlib import Path

import torch

PREFIXES = ("diffusion_model.", "transformer.", "unet.", "base_model.model.")
PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"))


def adapter_layers(tensors: dict[str, torch.Tensor], source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module name: (down, up, alpha / rank)} of a LoRA file's tensors."""
    out = {}
    for key, down in tensors.items():
        for down_end, up_end in PAIRS:
            if not key.endswith(down_end):
                continue
            stem = key[:-len(down_end)]
            if stem + up_end not in tensors:
                raise ValueError(f"training_adapter: '{source}' has '{key}' without its '{stem + up_end}'")
            rank = down.shape[0]
            alpha = float(tensors[stem + ".alpha"]) if stem + ".alpha" in tensors else float(rank)
            name = stem
            for prefix in PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            out[name] = (down, tensors[stem + up_end], alpha / rank)
    if not out:
        raise ValueError(f"training_adapter: '{source}' holds no LoRA layers (lora_A/lora_B or lora_down/lora_up)")
    return out


def merge_adapter(model: torch.nn.Module, path: str | Path, strength: float = 1.0) -> int:
    """Add the LoRA at ``path`` into ``model``'s linear weights (in place; the file is only
    read). Returns the number of layers changed. Every layer the file names must be a linear
    layer of the model, else nothing is changed and the error names them."""
    from safetensors.torch import load_file

    path = Path(path)
    layers = adapter_layers(load_file(str(path)), path.name)
    modules = dict(model.named_modules())
    unknown = [n for n in layers if not isinstance(modules.get(n), torch.nn.Linear)]
    if unknown:
        raise ValueError(f"training_adapter: '{path.name}' names {len(unknown)} layers that are not linear layers of "
                         f"this {type(model).__name__} (first: {', '.join(unknown[:3])}); is it an adapter for "
                         f"this model, in diffusers' layer names?")
    for name, (down, up, scale) in layers.items():
        weight = modules[name].weight
        if (up.shape[0], down.shape[1]) != tuple(weight.shape):
            raise ValueError(f"training_adapter: '{path.name}': layer '{name}' is {tuple(weight.shape)} in the model, "
                             f"{(up.shape[0], down.shape[1])} in the adapter")
    with torch.no_grad():
        for name, (down, up, scale) in layers.items():
            weight = modules[name].weight
            weight += (strength * scale * (up.float() @ down.float())).to(weight.dtype)
    return len(layers)
