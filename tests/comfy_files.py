"""Test-size model files in the layouts ComfyUI users keep: a FLUX.1 transformer in BFL layout
with CLIP-L, T5 and the VAE as separate files, each in bf16 or one of ComfyUI's fp8 layouts
(plain e4m3fn / e5m2, scaled with ``scale_weight`` and a ``scaled_fp8`` marker, or
``weight_scale`` with ``comfy_quant`` metadata), written at test time."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from comfy_server import REPO

LAYOUTS = ("bf16", "fp8_e4m3fn", "fp8_e5m2", "fp8_scaled", "fp8_weight_scale")
E4M3_MAX = 448.0


def in_layout(tensors: dict[str, torch.Tensor], layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """``tensors`` stored as ComfyUI stores ``layout``: the matrix and convolution weights under
    ``prefix`` quantized (biases, norms and embeddings of other parts as they were)."""
    out = {}
    for key, value in tensors.items():
        quantize = key.startswith(prefix) and key.endswith(".weight") and value.ndim >= 2 \
            and value.is_floating_point() and layout != "bf16"
        if not quantize:
            out[key] = value.to(torch.bfloat16) if layout == "bf16" and value.is_floating_point() else value
            continue
        layer = key[:-len(".weight")]
        if layout in ("fp8_e4m3fn", "fp8_e5m2"):
            out[key] = value.to(getattr(torch, layout.removeprefix("fp8_").replace("e4m3fn", "float8_e4m3fn")
                                        .replace("e5m2", "float8_e5m2")))
            continue
        scale = (value.abs().max().float() / E4M3_MAX).clamp(min=1e-12)
        out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
        if layout == "fp8_scaled":
            out[f"{layer}.scale_weight"] = scale.reshape(())
        else:
            out[f"{layer}.weight_scale"] = scale.reshape(())
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                       dtype=torch.uint8)
    if layout == "fp8_scaled":
        out[f"{prefix}scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return out


def write_flux_files(tiny_flux: Path, folder: Path, transformer: str | None = None,
                     t5: str | None = None) -> dict[str, Path]:
    """The tiny FLUX model as ComfyUI's separate files in ``folder``: the transformer (BFL layout,
    ``model.diffusion_model.`` keys) in layout ``transformer``, T5 in layout ``t5`` (None: as the
    model stores them), CLIP-L and the VAE as stored."""
    from diffusers import FluxTransformer2DModel

    from comfyui_persona.models.families.flux.keys import diffusers_to_bfl

    folder.mkdir(parents=True, exist_ok=True)
    ref = FluxTransformer2DModel.from_pretrained(tiny_flux / "transformer")
    bfl = {f"model.diffusion_model.{k}": v.contiguous() for k, v in
           diffusers_to_bfl(ref.state_dict(), dict(ref.config)).items()}
    files = {"base_model": folder / "flux1-tiny.safetensors"}
    save_file(in_layout(bfl, transformer, "model.diffusion_model.") if transformer else bfl, str(files["base_model"]))
    for sub, name, layout in (("text_encoder", "clip_l", None), ("text_encoder_2", "t5", t5), ("vae", "vae", None)):
        source = tiny_flux / sub / ("diffusion_pytorch_model.safetensors" if sub == "vae" else "model.safetensors")
        tensors = load_file(str(source))
        files[name] = folder / f"{name}.safetensors"
        save_file(in_layout(tensors, layout) if layout else tensors, str(files[name]))
    return files


def use_tiny_flux_configs(tiny_flux: Path, cache: Path) -> None:
    """The shipped configs describe the published FLUX.1; the separate files are the tiny
    model's, so its configs stand in (the transformer's shape is read from its file, all but the
    rotary embedding's axes, which no weight shows). Call with ``PERSONA_CACHE`` and ``PERSONA_T5_TOKENIZER`` set to ``cache`` and the
    tiny model's tokenizer_2."""
    configs = cache / "configs" / "flux"
    shutil.copytree(REPO / "configs" / "flux", configs, dirs_exist_ok=True)
    for sub in ("transformer", "text_encoder", "text_encoder_2", "vae", "tokenizer"):
        shutil.rmtree(configs / sub, ignore_errors=True)
        shutil.copytree(tiny_flux / sub, configs / sub, ignore=shutil.ignore_patterns("*.safetensors"))
    (configs / ".complete").write_text("flux")


def write_sdxl_checkpoint(tiny_sdxl: Path, folder: Path, cache: Path, layout: str | None = None):
    """A test-size SDXL as one original-layout checkpoint (UNet, VAE, CLIP-L and OpenCLIP-G, as
    in ``models/checkpoints``), its UNet in ``layout`` (None: fp32), and its configs in
    ``cache`` where Persona reads a single file's configs (``PERSONA_CACHE`` set to ``cache``).
    Its second text encoder is wider than the first, as SDXL's is: that is how a single-file
    loader tells the two apart. Returns the file and the modules it holds."""
    import copy

    from comfyui_persona.models.architectures import architecture
    from comfyui_persona.models.families import get_family
    from comfyui_persona.models.single_file import save_single_file

    arch = copy.deepcopy(architecture("sdxl", "tiny"))
    arch["text_2"] = dict(arch["text_2"], hidden_size=48, projection_dim=48, intermediate_size=96)
    arch["unet"] = dict(arch["unet"], cross_attention_dim=arch["text"]["hidden_size"] + 48,
                        projection_class_embeddings_input_dim=48 + 6 * arch["unet"]["addition_time_embed_dim"])
    torch.manual_seed(0)
    unet, vae, te, te2 = get_family("sdxl").build_modules(arch)
    configs = cache / "configs" / "sdxl"
    shutil.copytree(REPO / "configs" / "sdxl", configs, dirs_exist_ok=True)
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        shutil.rmtree(configs / sub, ignore_errors=True)
    unet.save_config(configs / "unet")
    vae.save_config(configs / "vae")
    te.config.save_pretrained(configs / "text_encoder")
    te2.config.save_pretrained(configs / "text_encoder_2")
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(tiny_sdxl / sub, configs / sub)
    (configs / ".complete").write_text("sdxl")
    path = save_single_file(folder / "sdxl-tiny.safetensors", unet, vae, te, dtype=torch.float32, text_encoder_2=te2)
    if layout:
        save_file(in_layout(load_file(str(path)), layout, "model.diffusion_model."), str(path))
    return path, {"denoiser": unet, "vae": vae, "text_encoder": te, "text_encoder_2": te2}


def write_z_image_files(tiny_z_image: Path, folder: Path, cache: Path, transformer: str | None = None) -> dict[str, Path]:
    """The tiny Z-Image as ComfyUI's separate files in ``folder``: the transformer in the original
    layout (fused qkv, ``model.diffusion_model.`` keys) in ``transformer`` (None: fp32), the
    Qwen3 text encoder as a causal LM's file (``model.`` names and an ``lm_head``, as
    ``qwen_3_4b.safetensors``) and the VAE; and its configs in ``cache`` (``PERSONA_CACHE``)
    where the shipped ones describe the published model."""
    from diffusers import ZImageTransformer2DModel

    from comfyui_persona.models.families.z_image.keys import diffusers_to_original

    folder.mkdir(parents=True, exist_ok=True)
    ref = ZImageTransformer2DModel.from_pretrained(tiny_z_image / "transformer")
    original = {f"model.diffusion_model.{k}": v.contiguous() for k, v in diffusers_to_original(ref.state_dict()).items()}
    files = {"base_model": folder / "z_image_tiny.safetensors", "llm": folder / "qwen_3_tiny.safetensors",
             "vae": folder / "ae.safetensors"}
    save_file(in_layout(original, transformer, "model.diffusion_model.") if transformer else original,
              str(files["base_model"]))
    te = load_file(str(tiny_z_image / "text_encoder" / "model.safetensors"))
    te = {f"model.{k}": v for k, v in te.items()}
    te["lm_head.weight"] = te["model.embed_tokens.weight"].clone()
    save_file(te, str(files["llm"]))
    save_file(load_file(str(tiny_z_image / "vae" / "diffusion_pytorch_model.safetensors")), str(files["vae"]))
    configs = cache / "configs" / "z_image"
    shutil.copytree(REPO / "configs" / "z_image", configs, dirs_exist_ok=True)
    for sub in ("transformer", "text_encoder", "vae", "tokenizer"):
        shutil.rmtree(configs / sub, ignore_errors=True)
        shutil.copytree(tiny_z_image / sub, configs / sub, ignore=shutil.ignore_patterns("*.safetensors"))
    (configs / ".complete").write_text("z_image")
    return files
