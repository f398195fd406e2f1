"""Key conversion between diffusers' SD1.x / SDXL layout and the original (LDM) single-file
layout that ComfyUI's CheckpointLoader, A1111/Forge and kohya read (SDXL's second text
encoder in OpenCLIP's own layout).

The block numbering is derived from the model's own config (blocks, layers per block, which
blocks have attention), so it is not tied to SD1.5's exact depth.
"""
from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."  # CLIP-L, transformers' names
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP-G, OpenCLIP's names

_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
           ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
_UNET_TOP = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
             ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
             ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]


def _unet_prefixes(config) -> list[tuple[str, str]]:
    """(ldm prefix, diffusers prefix) pairs for every block of the UNet."""
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    pairs = []
    index = 1
    for i in range(n):
        for j in range(layers[i]):
            pairs.append((f"input_blocks.{index}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                pairs.append((f"input_blocks.{index}.1.", f"down_blocks.{i}.attentions.{j}."))
            index += 1
        if i < n - 1:
            pairs.append((f"input_blocks.{index}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            index += 1
    index = 0
    up_layers = list(reversed(layers))
    for i in range(n):
        for j in range(up_layers[i] + 1):
            pairs.append((f"output_blocks.{index}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                pairs.append((f"output_blocks.{index}.1.", f"up_blocks.{i}.attentions.{j}."))
            if i < n - 1 and j == up_layers[i]:
                pairs.append((f"output_blocks.{index}.{2 if up_attn[i] else 1}.", f"up_blocks.{i}.upsamplers.0."))
            index += 1
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return pairs


def ldm_module_name(name: str, config) -> str:
    """A diffusers UNet module/parameter path in the original (LDM) layout, without prefix."""
    return _to_ldm(name, _unet_prefixes(config))


def _to_ldm(key: str, prefixes) -> str:
    new = key
    for ldm, hf in _UNET_TOP:
        if new.startswith(hf):
            new = ldm + new[len(hf):]
    for ldm, hf in prefixes:
        if new.startswith(hf):
            rest = new[len(hf):]
            if "resnets" in hf:
                for a, b in _RESNET:
                    rest = rest.replace(b, a)
            return ldm + rest
    return new


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(config)
    return {UNET_PREFIX + _to_ldm(key, prefixes): tensor for key, tensor in state.items()}


def _vae_prefixes(config) -> list[tuple[str, str]]:
    n = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    pairs = [("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(n):
        for j in range(layers):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < n - 1:
            pairs.append((f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0."))
            pairs.append((f"decoder.up.{n - 1 - i}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0."))
        for j in range(layers + 1):
            pairs.append((f"decoder.up.{n - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for j in range(2):
        pairs.append((f"mid.block_{j + 1}.", f"mid_block.resnets.{j}."))
    return pairs


_VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."),
             ("proj_out.", "to_out.0.")]


def vae_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    prefixes = _vae_prefixes(config)
    out = {}
    for key, tensor in state.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        for ldm, hf in prefixes:
            if hf in new:
                new = new.replace(hf, ldm)
                break
        if "mid.attn_1." in new:
            head, _, rest = new.partition("mid.attn_1.")
            for a, b in _VAE_ATTN:
                if rest.startswith(b):
                    rest = a + rest[len(b):]
                    break
            new = head + "mid.attn_1." + rest
            if tensor.ndim == 2 and not rest.startswith("norm."):
                tensor = tensor[:, :, None, None]  # linear -> 1x1 conv
        out[VAE_PREFIX + new] = tensor
    return out


def text_to_ldm(state: dict[str, torch.Tensor], prefix: str = TEXT_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + (k if k.startswith("text_model.") else f"text_model.{k}"): v
            for k, v in state.items()}


_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder (transformers' ``CLIPTextModelWithProjection``) in OpenCLIP's
    layout: ``transformer.resblocks.N`` with q, k and v fused into ``attn.in_proj_*``, and
    ``text_projection`` a matrix applied from the right (the transpose of the linear layer)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in _OPEN_CLIP_TOP:
            out[prefix + _OPEN_CLIP_TOP[key]] = tensor
            continue
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        if key.endswith("position_ids"):  # a buffer, not a weight
            continue
        m = _LAYER.fullmatch(key)
        if m is None:
            raise ValueError(f"text_encoder_2: no OpenCLIP name for '{key}'")
        block, rest = f"{prefix}transformer.resblocks.{m.group(1)}.", m.group(2)
        qkv = _QKV.fullmatch(rest)
        if qkv:
            fused.setdefault((block, qkv.group(2)), {})[qkv.group(1)] = tensor
            continue
        for hf, ldm in _OPEN_CLIP_LAYER:
            if rest.startswith(hf):
                rest = ldm + rest[len(hf):]
                break
        out[block + rest] = tensor
    for (block, kind), parts in fused.items():
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def components_to_ldm(unet, vae, text_encoder, dtype: torch.dtype = torch.float16,
                      text_encoder_2=None) -> dict[str, torch.Tensor]:
    """One checkpoint's tensors: SD1.x's, or SDXL's when ``text_encoder_2`` is given."""
    tensors = {}
    tensors.update(unet_to_ldm(unet.state_dict(), unet.config))
    tensors.update(vae_to_ldm(vae.state_dict(), vae.config))
    if text_encoder_2 is None:
        tensors.update(text_to_ldm(text_encoder.state_dict()))
    else:
        tensors.update(text_to_ldm(text_encoder.state_dict(), SDXL_TEXT_PREFIX))
        tensors.update(open_clip_to_ldm(text_encoder_2.state_dict()))
    return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in tensors.items()}
