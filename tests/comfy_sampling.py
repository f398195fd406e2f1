"""Sample a denoiser with ComfyUI's own code, in a process of its own (run with the test
Python, the ComfyUI root on ``sys.path``): ``python comfy_sampling.py request.json``.

What runs is ComfyUI's: its UNet / FLUX implementation, its model sampling (prediction type,
noise schedule, timestep scaling, FLUX's shift through its ModelSamplingFlux node, FLUX.2's
through its Flux2Scheduler's sigmas), its SDXL
size conditioning, its KSampler, and its LoRA loader (``load_lora_for_models``). ComfyUI
detects only the published model sizes, so the request tells it the test size where its code
fixes a published value: the attention heads and rotary axes, the GroupNorm group count, the
width of SDXL's size embedding and of Z-Image's timestep embedder, the VAE's latent scale. The weights must load with no key
missing or left over, and every LoRA key must be applied.

Request (JSON): ``comfyui`` (root), ``family`` (sd15/sdxl/flux/z_image/flux2/flux2_dev/qwen_image),
``denoiser`` (safetensors: LDM UNet keys, a single-file checkpoint, FLUX in diffusers or BFL
layout, Z-Image in diffusers or its original layout, FLUX.2 in BFL layout, Qwen-Image in
diffusers' layout, which is ComfyUI's), ``lora`` (or null),
``schedule`` ("flux2": klein's sigmas for the latent's tokens), ``config`` (unet_config
entries to set), ``norm_groups``, ``size_embedding``, ``timestep_embedder`` ([hidden, out]),
``latent_format`` ({scale_factor, shift_factor}, or Qwen-Image's per-channel
{latents_mean, latents_std} lists), ``conditioning`` (safetensors with
``positive``/``negative`` and ``positive_pooled``/``negative_pooled``), ``extra`` (conditioning
entries: SDXL sizes, FLUX guidance), ``latent`` ([B, C, H, W]; Qwen-Image's [B, C, 1, H, W]),
``seeds`` (one sample each),
``steps``, ``cfg``, ``sampler``, ``scheduler``, ``out`` (safetensors, key ``samples``: the
latents in the VAE's space, as ComfyUI's KSampler returns them, one per seed). Writes ``out``
and prints one JSON line.
"""
from __future__ import annotations

import json
import logging
import sys


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main(path: str) -> dict:
    req = json.loads(open(path).read())
    sys.path.insert(0, req["comfyui"])
    from comfy.cli_args import args

    args.cpu = True
    # the attention ComfyUI runs on an NVIDIA card (PyTorch's); on a CPU it would pick its
    # sub-quadratic one, the same product in chunks and many times slower at these sizes
    args.use_pytorch_cross_attention = True
    import torch
    from safetensors.torch import load_file, save_file

    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.sample
    import comfy.sd
    import comfy.supported_models as supported
    import comfy.utils

    caught = _Warnings()
    logging.getLogger().addHandler(caught)

    sd = comfy.utils.load_torch_file(req["denoiser"])
    prefix = "model.diffusion_model." if any(k.startswith("model.diffusion_model.") for k in sd) else ""
    diffusers_layout = {"flux": "x_embedder.weight", "z_image": "noise_refiner.0.attention.norm_k.weight"}
    if diffusers_layout.get(req["family"]) in sd:  # diffusers layout: ComfyUI's own conversion
        sd = comfy.model_detection.convert_diffusers_mmdit(sd, "")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    unet_config = comfy.model_detection.detect_unet_config(sd, "")
    model_config = {"sd15": supported.SD15, "sdxl": supported.SDXL, "flux": supported.Flux,
                    "z_image": supported.ZImage, "flux2": supported.Flux2, "flux2_dev": supported.Flux2,
                    "qwen_image": supported.QwenImage}[req["family"]](unet_config)
    model_config.unet_config.update(req.get("config") or {})
    model_config.set_inference_dtype(torch.float32, None)
    groups = req.get("norm_groups")
    if groups:
        base = comfy.ops.disable_weight_init

        class Ops(base):
            class GroupNorm(base.GroupNorm):
                def __init__(self, *a, **k):
                    if "num_groups" in k:
                        k["num_groups"] = groups
                    else:
                        a = (groups, *a[1:])
                    super().__init__(*a, **k)

        model_config.custom_operations = Ops
    for name, value in (req.get("latent_format") or {}).items():  # lists: per-channel statistics (Wan 2.1's)
        if isinstance(value, list):
            value = torch.tensor(value).view(1, -1, *[1] * (len(req["latent"]) - 2))
        setattr(model_config.latent_format, name, value)
    model = model_config.get_model(sd, "")
    if req.get("size_embedding"):
        from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

        model.embedder = Timestep(req["size_embedding"])
    if req.get("timestep_embedder"):  # Z-Image's: ComfyUI sizes it for the published width only
        hidden, out = req["timestep_embedder"]
        embedder = type(model.diffusion_model.t_embedder)
        model.diffusion_model.t_embedder = embedder(hidden, output_size=out, operations=comfy.ops.disable_weight_init)
    # every weight present, none left over (ComfyUI builds its layers uninitialised)
    model.diffusion_model.load_state_dict(model_config.process_unet_state_dict(dict(sd)), strict=True)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    lora_keys = 0
    if req.get("lora"):
        import comfy.lora

        lora = comfy.utils.load_torch_file(req["lora"], safe_load=True)
        lora_keys = sum(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in lora)
        patcher, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
    if req["family"] == "flux":
        from comfy_extras.nodes_model_advanced import ModelSamplingFlux

        h, w = req["latent"][-2:]  # the node counts image tokens from pixels of an 8x VAE
        patcher = ModelSamplingFlux().patch(patcher, 1.15, 0.5, w * 8, h * 8)[0]

    sigmas = None
    if req.get("schedule") == "flux2":  # klein's Flux2Scheduler: FLUX.2's empirical shift for the image's tokens
        from comfy_extras.nodes_flux import get_schedule

        h, w = req["latent"][-2:]  # (the node counts tokens from pixels of a 16x VAE; here the latent's own)
        sigmas = get_schedule(req["steps"], h * w)

    tensors = load_file(req["conditioning"])
    extra = req.get("extra") or {}

    def cond(name):
        info = dict(extra)
        if f"{name}_pooled" in tensors:
            info["pooled_output"] = tensors[f"{name}_pooled"]
        return [[tensors[name], info]]

    latent = comfy.sample.fix_empty_latent_channels(patcher, torch.zeros(req["latent"]))
    samples = []
    for seed in req["seeds"]:  # as a KSampler queued once per seed
        noise = comfy.sample.prepare_noise(latent, seed)
        samples.append(comfy.sample.sample(patcher, noise, req["steps"], req["cfg"], req["sampler"], req["scheduler"],
                                           cond("positive"), cond("negative"), latent, denoise=1.0,
                                           sigmas=sigmas, disable_pbar=True, seed=seed))
    save_file({"samples": torch.cat(samples).float().contiguous()}, req["out"])
    not_loaded = [m for m in caught.messages if "lora key not loaded" in m or "NOT LOADED" in m]
    patches = len(patcher.patches) if req.get("lora") else 0  # weights patched (Z-Image: q, k, v patch one qkv)
    applied = sum(len(v) for v in patcher.patches.values()) if req.get("lora") else 0  # LoRA modules applied
    plain = (int, float, str, list)
    return {"unet_config": {k: v for k, v in model_config.unet_config.items() if isinstance(v, plain)},
            "lora_keys": lora_keys, "patched_weights": patches, "applied": applied, "not_loaded": not_loaded,
            "model_sampling": type(patcher.get_model_object("model_sampling")).__name__}


def sample_with_comfyui(workdir, conditioning: dict, **request):
    """Run this script on the newest ComfyUI host (``hosts.NEWEST``; the test is skipped with
    the reason when there is none) and return its latents and what it reports.
    ``conditioning`` holds the tensors named above."""
    import os
    import subprocess
    from pathlib import Path

    import pytest
    from safetensors.torch import load_file, save_file

    from comfy_server import NEWEST, HostUnavailable, host_env, host_source

    try:
        root = host_source(NEWEST)
    except HostUnavailable as e:
        pytest.skip(str(e))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in conditioning.items()}, str(workdir / "cond.safetensors"))
    request = {"comfyui": str(root), "conditioning": str(workdir / "cond.safetensors"),
               "out": str(workdir / "samples.safetensors"), **request}
    (workdir / "request.json").write_text(json.dumps(request, indent=2))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(workdir / "request.json")],
                          cwd=root, capture_output=True, text=True, timeout=600,
                          env=host_env(NEWEST, {**os.environ, "PYTHONUNBUFFERED": "1"}))
    (workdir / "comfyui.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"ComfyUI sampling failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return load_file(str(workdir / "samples.safetensors"))["samples"], json.loads(done.stdout.strip().splitlines()[-1])


def decode(vae, latents, family: str = "sd15"):
    """ComfyUI's latents (in the VAE's space) as uint8 RGB images, decoded by the model's VAE
    (the test-size VAE's GroupNorm is not ComfyUI's fixed 32 groups) as its family reads it
    (a video VAE's latents: one frame each)."""
    import torch

    from comfyui_persona.models.families import get_family

    if latents.dim() == 5:
        latents = latents[:, :, 0]
    with torch.no_grad():
        images = get_family(family).decode_latents(vae, latents.to(vae.dtype)).float()
    return [((im.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy() for im in images]


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
