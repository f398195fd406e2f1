"""FLUX.2 transformer names: diffusers' layout <-> Black Forest Labs' original layout (what
``flux2-klein-4b.safetensors``, ComfyUI's Flux2 model and kohya's LoRAs use).

FLUX.2 keeps FLUX.1's block names, without biases, with a modulation shared by all double
blocks (``double_stream_modulation_img/txt``) and one by all single blocks, and with the
single block's projections already fused in diffusers too (``to_qkv_mlp_proj`` is
``linear1``, ``to_out`` is ``linear2``). Only the double blocks' ``qkv`` layers fuse
diffusers' ``to_q``/``to_k``/``to_v``. The tables follow the config (block counts, guidance).
"""
from __future__ import annotations

import torch

from ..flux.keys import fuse, kohya_bfl_lora, split


def linear_map(cfg) -> list[tuple[str, list[str]]]:
    """(BFL linear module, [diffusers linear modules stacked by rows]) for every linear layer."""
    out = [("img_in", ["x_embedder"]), ("txt_in", ["context_embedder"]),
           ("time_in.in_layer", ["time_guidance_embed.timestep_embedder.linear_1"]),
           ("time_in.out_layer", ["time_guidance_embed.timestep_embedder.linear_2"]),
           ("double_stream_modulation_img.lin", ["double_stream_modulation_img.linear"]),
           ("double_stream_modulation_txt.lin", ["double_stream_modulation_txt.linear"]),
           ("single_stream_modulation.lin", ["single_stream_modulation.linear"]),
           ("final_layer.linear", ["proj_out"]), ("final_layer.adaLN_modulation.1", ["norm_out.linear"])]
    if cfg["guidance_embeds"]:
        out += [("guidance_in.in_layer", ["time_guidance_embed.guidance_embedder.linear_1"]),
                ("guidance_in.out_layer", ["time_guidance_embed.guidance_embedder.linear_2"])]
    for i in range(cfg["num_layers"]):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        out += [(b + "img_attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]),
                (b + "txt_attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]),
                (b + "img_attn.proj", [d + "attn.to_out.0"]), (b + "txt_attn.proj", [d + "attn.to_add_out"]),
                (b + "img_mlp.0", [d + "ff.linear_in"]), (b + "img_mlp.2", [d + "ff.linear_out"]),
                (b + "txt_mlp.0", [d + "ff_context.linear_in"]), (b + "txt_mlp.2", [d + "ff_context.linear_out"])]
    for i in range(cfg["num_single_layers"]):
        b, s = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        out += [(b + "linear1", [s + "attn.to_qkv_mlp_proj"]), (b + "linear2", [s + "attn.to_out"])]
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


def diffusers_to_bfl(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    return fuse(state, linear_map(cfg), param_map(cfg))


def bfl_to_diffusers(tensors: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The reverse: a double block's ``qkv`` splits into three equal parts."""
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return split(tensors, linear_map(cfg), param_map(cfg), lambda parts: [inner] * len(parts))


def kohya_flux2_lora(lora: dict[str, tuple[torch.Tensor, torch.Tensor]], out_rows: dict[str, int], cfg,
                     alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """kohya LoRA tensors (``lora_unet_<bfl module>``, lora_down/lora_up/alpha): what ComfyUI
    maps for its Flux2 model and diffusers' FLUX.2 LoRA loader converts."""
    return kohya_bfl_lora(lora, out_rows, linear_map(cfg), alpha, rank)
