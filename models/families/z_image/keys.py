"""Z-Image transformer names: diffusers' layout <-> the original layout that ComfyUI's model
and the published single files (``z_image_turbo_bf16.safetensors``) use.

The original layout fuses each attention's query, key and value into one ``attention.qkv``
layer (diffusers keeps ``to_q``/``to_k``/``to_v`` apart), names the output ``attention.out``
and the norms ``q_norm``/``k_norm``, and has a single patch embedder and final layer where
diffusers keeps one per patch size (``all_x_embedder.2-1``). The table is derived from the
config (block counts), so it serves the test-size models and the real one alike.

LoRA files for ComfyUI keep diffusers' module names under ``diffusion_model.``: ComfyUI's
Z-Image LoRA map (``comfy/lora.py``, the Lumina2 branch) places ``to_q``/``to_k``/``to_v``
onto their rows of the fused ``qkv`` weight itself, so nothing needs fusing here.
"""
from __future__ import annotations

import torch

# diffusers name inside a block -> the original name
BLOCK = {"attention.norm_q.weight": "attention.q_norm.weight", "attention.norm_k.weight": "attention.k_norm.weight",
         "attention.to_out.0.weight": "attention.out.weight", "attention.to_out.0.bias": "attention.out.bias"}
QKV = ("attention.to_q", "attention.to_k", "attention.to_v")
TOP = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder."}
BLOCK_LISTS = ("layers.", "noise_refiner.", "context_refiner.")


def _block(key: str) -> tuple[str, str] | None:
    """(block prefix, name inside the block) of a block parameter, else None."""
    for lst in BLOCK_LISTS:
        if key.startswith(lst):
            index, _, rest = key[len(lst):].partition(".")
            return f"{lst}{index}.", rest
    return None


def diffusers_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        split = _block(key)
        if split is not None:
            prefix, rest = split
            if rest.startswith(QKV):
                if rest.startswith("attention.to_q."):
                    kind = rest.rsplit(".", 1)[1]
                    out[f"{prefix}attention.qkv.{kind}"] = torch.cat(
                        [state[f"{prefix}{p}.{kind}"] for p in QKV], dim=0)
                continue
            out[prefix + BLOCK.get(rest, rest)] = tensor
            continue
        for old, new in TOP.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = tensor
    return out


def original_to_diffusers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse; the fused ``qkv`` rows split in three equal parts (Z-Image's attention has
    as many key and value heads as query heads)."""
    back = {v: k for k, v in BLOCK.items()}
    out = {}
    for key, tensor in tensors.items():
        split = _block(key)
        if split is not None:
            prefix, rest = split
            if rest.startswith("attention.qkv."):
                kind = rest.rsplit(".", 1)[1]
                if tensor.shape[0] % 3:
                    raise ValueError(f"'{key}': {tensor.shape[0]} rows do not split into query, key and value")
                for p, piece in zip(QKV, tensor.chunk(3, dim=0)):
                    out[f"{prefix}{p}.{kind}"] = piece.contiguous()
                continue
            out[prefix + back.get(rest, rest)] = tensor
            continue
        for old, new in TOP.items():
            if key.startswith(new):
                key = old + key[len(new):]
        out[key] = tensor
    return out

