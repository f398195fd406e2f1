"""Persona's fp8 linear layer: a frozen weight stored in float8 with a scale per output row,
computed in the input's precision (16 or 32 bits). Built two ways:

- from a layer in full precision (``quantize_base: fp8``, trainers/memory/quantize.py): one
  scale per row, ``absmax / 448``;
- from a file's fp8 weights as stored (:func:`install_stored_fp8`): ComfyUI's fp8 files keep one
  scale per tensor (1 for a plain ``float8_e4m3fn`` file), repeated for every row, so the layer
  computes with exactly the file's values and no second rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_SUFFIX = ".scale"  # beside "<layer>.weight" in a state dict: the layer's per-row scales


def _dequantized(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight * scale`` in ``dtype``, scaled in place in a copy of its own (one temporary, not
    two: on the CPU the conversion from fp8 is as slow as the product it feeds)."""
    return weight.to(dtype, copy=True).mul_(scale.to(dtype))


class _Fp8Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        if not x.is_floating_point() or x.element_size() < 2:
            raise TypeError(f"Fp8Linear: the input is {x.dtype}, not a 16- or 32-bit float (model code cast it to the "
                            f"layer's float8 weight dtype: name the layer in its family's quantize_skip)")
        ctx.save_for_backward(weight, scale)
        return F.linear(x, _dequantized(weight, scale, x.dtype), bias.to(x.dtype) if bias is not None else None)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        return grad @ _dequantized(weight, scale, grad.dtype), None, None, None


class Fp8Linear(torch.nn.Linear):
    """A frozen linear layer with float8 weights and per-row scales (saved in state dicts
    as ``weight`` + ``scale``). Made from ``source`` (on the meta device: an empty layer whose
    ``weight`` and ``scale`` a state dict fills)."""

    def __init__(self, source: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = source.in_features, source.out_features
        w = source.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
        # buffers, not parameters: pipelines take a model's dtype from its first parameter
        self.register_buffer("weight", (w / scale).to(FP8))
        self.register_buffer("scale", scale.to(torch.float32))
        self.bias = None if source.bias is None else torch.nn.Parameter(source.bias.detach().clone(),
                                                                        requires_grad=False)

    def forward(self, x):
        return _Fp8Matmul.apply(x, self.weight, self.scale, self.bias)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale


def dequantize_stored(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A stored fp8 weight with its per-row ``scale`` column in ``dtype`` (the product rounded once)."""
    return (weight.float() * scale).to(dtype)


def install_stored_fp8(model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                       skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Prepare ``model`` (built on the meta device) for ``tensors`` in which fp8 weights come as
    stored, each ``<layer>.weight`` with its ``<layer>.scale`` column: every plain
    ``nn.Linear`` with such a weight becomes an empty :class:`Fp8Linear` (``load_state_dict``
    then fills it); a weight of any other layer, or of a layer whose name contains one of
    ``skip`` (model code that casts to its weight's dtype), is dequantized into bf16 and its
    scale dropped. Returns the tensors to load."""
    out = dict(tensors)
    for key, value in tensors.items():
        if value.dtype != FP8 or not key.endswith(".weight"):
            continue
        layer = key[:-len(".weight")]
        scale = out.pop(layer + SCALE_SUFFIX)
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            module = None
        if type(module) is torch.nn.Linear and not any(s in layer for s in skip):
            parent, _, name = layer.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, name, Fp8Linear(module))
            out[layer + SCALE_SUFFIX] = scale
        else:
            out[key] = dequantize_stored(value, scale)
    return out
