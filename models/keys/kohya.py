"""kohya's LoRA key layout from peft's adapter tensors.

peft's ``lora_A`` is kohya's ``lora_down`` ([rank, in]), ``lora_B`` is ``lora_up``
([out, rank]), and both scale by alpha / rank, so the conversion is a renaming:
``<prefix>_<module path with '_'>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``.
Which prefix and module names a family uses is the family's (``models.families``).
"""
from __future__ import annotations

import re

import torch

PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(.+?)\.lora_([AB])(?:\.default)?\.weight$")
DORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+?)\.dora_scale$")


def _classic_name(module: str, prefix: str) -> str:
    """Text-encoder module paths as in every SD checkpoint: ``text_model.encoder...``
    (recent transformers name CLIPTextModel's modules without the ``text_model.`` level)."""
    if prefix.startswith("lora_te") and not module.startswith("text_model."):
        return f"text_model.{module}"
    return module


def peft_to_kohya(state: dict[str, torch.Tensor], prefix: str, alpha: float,
                  rename=None) -> dict[str, torch.Tensor]:
    """peft LoRA tensors of one model -> kohya tensors with ``prefix`` ('lora_unet', 'lora_te',
    'lora_te1', ...); ``rename`` maps a module path first (SDXL: diffusers -> original layout)."""
    def name(module: str) -> str:
        return f"{prefix}_{_classic_name(rename(module) if rename else module, prefix).replace('.', '_')}"

    return _lora_tensors(state, alpha, name)


def peft_to_dotted(state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """The same tensors named ``<prefix><module path>`` with its dots kept
    (``diffusion_model.layers.0.attention.to_q.lora_down.weight``): the layout ComfyUI's LoRA
    loader maps onto the modules of models whose own names are diffusers' (Z-Image, Qwen-Image)."""
    return _lora_tensors(state, alpha, lambda module: prefix + module)


def _lora_tensors(state: dict[str, torch.Tensor], alpha: float, name) -> dict[str, torch.Tensor]:
    """``lora_down``/``lora_up``/``alpha`` (and a DoRA layer's ``dora_scale``) of each module,
    under ``name(module path)``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sorted(state.items()):
        dora = DORA_KEY.match(key)
        if dora:
            out[f"{name(dora.group(1))}.dora_scale"] = tensor.detach().contiguous()
            continue
        m = PEFT_KEY.match(key)
        if not m:
            continue
        module, which = m.groups()
        out[f"{name(module)}.{'lora_down' if which == 'A' else 'lora_up'}.weight"] = tensor.detach().contiguous()
        out[f"{name(module)}.alpha"] = torch.tensor(float(alpha))
    return out


def text_encoder_tensors(prefixes: list[str], te_states: list[dict], alpha: float) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for prefix, state in zip(prefixes, te_states):
        if state:
            out.update(peft_to_kohya(state, prefix, alpha))
    return out


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a model carrying a peft adapter (names as in the model), and for
    DoRA layers each one's ``<module>.dora_scale`` in the form ComfyUI applies
    (:func:`comfy_dora_scales`)."""
    state = {k: v for k, v in model.state_dict().items() if "lora_A" in k or "lora_B" in k}
    state.update(comfy_dora_scales(model))
    return state


def comfy_dora_scales(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``<module>.dora_scale`` of every DoRA layer, shaped ``[out, 1, ...]`` (the output axis).

    peft's DoRA layer computes ``W' = m / ||W + dW|| * (W + dW)`` with row norms over the input
    axes and ``dW`` the scaled LoRA product. ComfyUI's loader (``weight_decompose``), given a
    scale on the output axis ``s``, computes ``W' = s / ||W|| * (W + dW)``: the row norms of the
    base weight. So the file stores ``s = m * ||W|| / ||W + dW||``, with which ComfyUI's
    weight equals peft's exactly (for the base model the LoRA was trained on)."""
    out = {}
    for name, module in model.named_modules():
        magnitudes = getattr(module, "lora_magnitude_vector", None)
        if not magnitudes:
            continue
        from peft.utils.integrations import dequantize_module_weight

        base = dequantize_module_weight(module.get_base_layer()).detach().float()
        for adapter, layer in magnitudes.items():
            delta = module.get_delta_weight(adapter).detach().float()
            rows = base.shape[0]
            norm = base.reshape(rows, -1).norm(dim=1)
            norm_adapted = (base + delta).reshape(rows, -1).norm(dim=1)
            scale = layer.weight.detach().float() * norm / norm_adapted
            out[f"{name}.dora_scale"] = scale.reshape(rows, *[1] * (base.dim() - 1)).cpu()
    return out
