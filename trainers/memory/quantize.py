"""A quantized frozen base: the denoiser's linear weights stored in 8 or 4 bits, computed in
the mixed-precision dtype. LoRA adapters (peft) wrap the quantized layers as usual.

- ``fp8``: pure PyTorch (``models/fp8_linear.py``). float8 e4m3 weights with one scale per
  output row (absmax / 448); the forward dequantizes one layer at a time, and a custom autograd
  function keeps only the 8-bit weight for the backward (a plain ``F.linear`` would save the
  dequantized copy). Layers read from an fp8 file as stored are already such layers and stay.
- ``int8`` / ``nf4``: bitsandbytes' ``Linear8bitLt`` / ``Linear4bit`` (what QLoRA uses).
"""
from __future__ import annotations

import logging

import torch

from ...models.fp8_linear import Fp8Linear

log = logging.getLogger(__name__)


def _linear_children(module: torch.nn.Module):
    for name, child in module.named_children():
        if type(child) is torch.nn.Linear:
            yield module, name, child
        else:
            yield from _linear_children(child)


def quantize_linears(module: torch.nn.Module, mode: str, compute_dtype: torch.dtype = torch.bfloat16,
                     skip: tuple[str, ...] = ()) -> int:
    """Replace every ``nn.Linear`` of ``module`` (frozen) by its ``mode`` version, in place.
    Returns the number replaced. Layers whose qualified name contains one of ``skip`` stay."""
    if mode == "off":
        return 0
    if mode not in ("fp8", "int8", "nf4"):
        raise ValueError(f"quantize_base: '{mode}' is not off/fp8/int8/nf4")
    if mode != "fp8":
        from ...core.deps import require

        bnb = require("bitsandbytes", f"quantize_base '{mode}'")
    names = {id(m): n for n, m in module.named_modules()}
    count = 0
    # (parent, name) only: holding the replaced layers would keep every full-precision weight alive
    for parent, name in [(p, n) for p, n, _ in _linear_children(module)]:
        child = getattr(parent, name)
        full = f"{names.get(id(parent), '')}.{name}"
        if any(s in full for s in skip):
            continue
        if child.weight.requires_grad:
            raise ValueError(f"quantize_base: '{full}' is trainable; only frozen weights are quantized")
        if mode == "fp8":
            new = Fp8Linear(child)
        elif mode == "int8":
            new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                      has_fp16_weights=False, device="meta")
            new.weight = bnb.nn.Int8Params(child.weight.data.to(torch.float16).cpu(), requires_grad=False,
                                           has_fp16_weights=False)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
        else:
            new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                    compute_dtype=compute_dtype, quant_type="nf4", device="meta")
            new.weight = bnb.nn.Params4bit(child.weight.data.to(torch.float16).cpu(), requires_grad=False,
                                           quant_type="nf4")
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
        setattr(parent, name, new)
        del child
        count += 1
    log.info("quantize_base %s: %d linear layers", mode, count)
    return count


def restore_adapter_precision(model: torch.nn.Module, init: str = "gaussian") -> int:
    """peft gives new adapters the dtype of their base layer's weight: float8 for an
    :class:`Fp8Linear`. Put those adapters back in fp32 and re-initialise them (the float8
    copy of the random init is too coarse). Returns the number of layers fixed."""
    count = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(base, Fp8Linear) and hasattr(module, "lora_A"):
            for adapter in list(module.lora_A.keys()):
                module.lora_A[adapter].to(torch.float32)
                module.lora_B[adapter].to(torch.float32)
                module.reset_lora_parameters(adapter, init)
            count += 1
    return count
