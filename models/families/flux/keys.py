"""FLUX transformer names: diffusers' layout <-> Black Forest Labs' original layout (what
``flux1-dev.safetensors``, ComfyUI's model and kohya's FLUX LoRAs use).

BFL fuses some linear layers that diffusers keeps apart: a double block's ``img_attn.qkv``
is diffusers' ``to_q``/``to_k``/``to_v`` stacked by rows, a single block's ``linear1`` is
``to_q``/``to_k``/``to_v``/``proj_mlp``. The table is derived from the config (block counts),
so it serves the tiny test models and the real one alike.
"""
from __future__ import annotations

import torch

SWAPPED = {"final_layer.adaLN_modulation.1"}  # diffusers orders (scale, shift), BFL (shift, scale)


def linear_map(cfg) -> list[tuple[str, list[str]]]:
    """(BFL linear module, [diffusers linear modules stacked by rows]) for every linear layer."""
    out = [("img_in", ["x_embedder"]), ("txt_in", ["context_embedder"]),
           ("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"]),
           ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"]),
           ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"]),
           ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"]),
           ("final_layer.linear", ["proj_out"]), ("final_layer.adaLN_modulation.1", ["norm_out.linear"])]
    if cfg["guidance_embeds"]:
        out += [("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"]),
                ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"])]
    for i in range(cfg["num_layers"]):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out += [(b + "img_attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]),
                (b + "txt_attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]),
                (b + "img_attn.proj", [d + "attn.to_out.0"]), (b + "txt_attn.proj", [d + "attn.to_add_out"]),
                (b + "img_mlp.0", [d + "ff.net.0.proj"]), (b + "img_mlp.2", [d + "ff.net.2"]),
                (b + "txt_mlp.0", [d + "ff_context.net.0.proj"]), (b + "txt_mlp.2", [d + "ff_context.net.2"]),
                (b + "img_mod.lin", [d + "norm1.linear"]), (b + "txt_mod.lin", [d + "norm1_context.linear"])]
    for i in range(cfg["num_single_layers"]):
        b, s = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out += [(b + "linear1", [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"]),
                (b + "linear2", [s + "proj_out"]), (b + "modulation.lin", [s + "norm.linear"])]
    return out


def param_map(cfg) -> list[tuple[str, str]]:
    """(BFL parameter, diffusers parameter) for the RMS-norm scales."""
    out = []
    for i in range(cfg["num_layers"]):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}.attn."
        out += [(b + "img_attn.norm.query_norm.scale", d + "norm_q.weight"),
                (b + "img_attn.norm.key_norm.scale", d + "norm_k.weight"),
                (b + "txt_attn.norm.query_norm.scale", d + "norm_added_q.weight"),
                (b + "txt_attn.norm.key_norm.scale", d + "norm_added_k.weight")]
    for i in range(cfg["num_single_layers"]):
        b, s = f"single_blocks.{i}.", f"single_transformer_blocks.{i}.attn."
        out += [(b + "norm.query_norm.scale", s + "norm_q.weight"), (b + "norm.key_norm.scale", s + "norm_k.weight")]
    return out


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def fuse(state: dict[str, torch.Tensor], linears, params) -> dict[str, torch.Tensor]:
    """BFL tensors from diffusers ones, given a family's (BFL, [diffusers parts]) linear table
    and (BFL, diffusers) parameter table: fused layers stacked by rows."""
    out = {}
    for bfl, parts in linears:
        for kind in ("weight", "bias"):
            tensors = [state[f"{p}.{kind}"] for p in parts if f"{p}.{kind}" in state]
            if not tensors:
                continue
            t = torch.cat(tensors, dim=0)
            out[f"{bfl}.{kind}"] = _swap(t) if bfl in SWAPPED else t
    for bfl, hf in params:
        out[bfl] = state[hf]
    return out


def split(tensors: dict[str, torch.Tensor], linears, params, sizes) -> dict[str, torch.Tensor]:
    """The reverse of :func:`fuse`; ``sizes(parts)`` gives a fused layer's row sizes."""
    out = {}
    for bfl, parts in linears:
        for kind in ("weight", "bias"):
            key = f"{bfl}.{kind}"
            if key not in tensors:
                continue
            t = tensors[key]
            t = _swap(t) if bfl in SWAPPED else t
            if len(parts) == 1:
                out[f"{parts[0]}.{kind}"] = t
                continue
            for p, piece in zip(parts, torch.split(t, sizes(parts), dim=0)):
                out[f"{p}.{kind}"] = piece.contiguous()
    for bfl, hf in params:
        if bfl in tensors:
            out[hf] = tensors[bfl]
    return out


def diffusers_to_bfl(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    return fuse(state, linear_map(cfg), param_map(cfg))


def bfl_to_diffusers(tensors: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The reverse; row sizes of the fused parts follow from the config."""
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp = int(inner * 4.0)
    return split(tensors, linear_map(cfg), param_map(cfg), lambda parts: [inner] * 3 + ([mlp] if len(parts) == 4 else []))


def kohya_flux_lora(lora: dict[str, tuple[torch.Tensor, torch.Tensor]], out_rows: dict[str, int], cfg,
                    alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """kohya FLUX LoRA tensors (``lora_unet_<bfl module>``) from per-diffusers-module (down, up)."""
    return kohya_bfl_lora(lora, out_rows, linear_map(cfg), alpha, rank)


def kohya_bfl_lora(lora: dict[str, tuple[torch.Tensor, torch.Tensor]], out_rows: dict[str, int], linears,
                   alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """kohya LoRA tensors (``lora_unet_<bfl module>``) of a BFL-layout model (FLUX.1, FLUX.2)
    from per-diffusers-module (down, up), given the family's linear table.

    A fused BFL layer gets the parts' downs stacked and their ups placed block-diagonally
    (zero rows for parts without a LoRA); its alpha grows with its rank so that
    alpha / rank, and hence every delta, is unchanged.
    """
    out = {}
    for bfl, parts in linears:
        present = [p for p in parts if p in lora]
        if not present:
            continue
        downs = [lora[p][0] for p in present]
        r = sum(d.shape[0] for d in downs)
        rows = [out_rows[p] for p in parts]
        up = torch.zeros(sum(rows), r, dtype=lora[present[0]][1].dtype)
        row, col = 0, 0
        for p, n in zip(parts, rows):
            if p in lora:
                down_p, up_p = lora[p]
                up[row:row + n, col:col + down_p.shape[0]] = up_p
                col += down_p.shape[0]
            row += n
        if bfl in SWAPPED:
            up = _swap(up)
        name = "lora_unet_" + bfl.replace(".", "_")
        out[f"{name}.lora_down.weight"] = torch.cat(downs, dim=0).contiguous()
        out[f"{name}.lora_up.weight"] = up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha) * r / rank)
    return out
