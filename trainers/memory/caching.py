"""The memory of a run's caching phase, and where each encoder runs in it.

Before the first step the VAE encodes the dataset into latents and the text encoders encode
the captions (``cache_latents``, ``cache_text_embeddings``). They run one after the other:
first the VAE alone on the device, then the text encoders together (a family's ``encode``
calls every encoder for each caption); the denoiser is not on the device yet. Each runs in the
run's compute precision (cast on the CPU before it moves). Measured on the ``meta`` device at
the model's own size, the phase needs, at 1024 px in bf16: the VAE 0.16 GB of weights plus
2.3 GB of activations for one image (``vae_slicing``), CLIP-L 0.23 GB, SDXL's OpenCLIP-bigG
1.3 GB, FLUX's T5-XXL 8.9 GB of weights plus 0.3 GB for a 512-token caption.

:func:`plan_caching` keeps on the device what fits the usable budget and names the rest in
``encode_on_cpu``: those encode on the CPU (the largest text encoder first, then the next,
then the VAE), which is slower but needs no device memory; the loop runs them there through
:func:`run_on_cpu`. So FLUX's 8 GB plan encodes its captions with T5-XXL on the CPU and CLIP-L
on the device.

A text encoder read from ComfyUI's separate file keeps its fp8 matrices at a byte each
(``models/families/separate_files.load_text_model``): its weights count as the file holds them
(``host_memory.text_weight_bytes``) where that is less than the model at the compute
precision, so Qwen3-4B's fp8 file (about 4.5 GB) can encode on a 6 GB card where its bf16 file
(8 GB) cannot.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import torch

ENCODERS = ("vae", "text_encoder", "text_encoder_2")
_MiB = 2 ** 20


def module_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of ``module``'s weights and buffers once its floating-point ones are cast to
    ``dtype`` (8-bit weights stay as they are)."""
    from .techniques import _KEEP

    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        size = dtype.itemsize if t.is_floating_point() and t.dtype not in _KEEP else t.element_size()
        total += t.numel() * size
    return total


@lru_cache(maxsize=64)
def encoder_memory(family: str, base_model: str | None, size: str, resolution: int, dtype_name: str,
                   token_lengths: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, int]]:
    """``{encoder: (weight bytes, activation bytes)}`` of each encoder the model has, encoding
    one image at ``resolution`` (the VAE) or one caption of its token length, in ``dtype``:
    run on the ``meta`` device with the live-tensor meter."""
    from .simulate import FusedAttentionOnMeta, LiveTensorMeter, architecture

    from ...models.families import get_family

    dtype = getattr(torch, dtype_name)
    comps = architecture(family, base_model, size)
    family = get_family(family)
    lengths = dict(token_lengths)
    out = {}
    with torch.inference_mode(False), torch.no_grad():
        for name in ENCODERS:
            source = getattr(comps, name, None)
            if source is None:
                continue
            module = copy.deepcopy(source)
            for t in [*module.parameters(), *module.buffers()]:
                if t.is_floating_point():
                    t.data = t.data.to(dtype)
            meter = LiveTensorMeter()
            meter.add_module(module)
            weights = meter.live
            meter.reset_peak()
            with meter, FusedAttentionOnMeta():
                if name == "vae":
                    family.encode_pixels(module, torch.zeros(1, 3, resolution, resolution, device="meta", dtype=dtype))
                else:
                    module(torch.zeros(1, lengths.get(name, 77), dtype=torch.long, device="meta"))
            out[name] = (weights, meter.peak - weights)
    return out


def run_encoder_memory(cfg, base_model: str | None, size: str) -> dict[str, tuple[int, int]]:
    """:func:`encoder_memory` of ``cfg``'s run at its compute precision, a text encoder read from a
    separate file weighed as the device holds it where that is less (its fp8 matrices stay fp8:
    ``host_memory.text_weight_bytes``)."""
    from ...models.families import get_family
    from .host_memory import text_weight_bytes
    from .techniques import weight_dtype

    dtype = weight_dtype(cfg.mixed_precision, torch.device("cuda"))
    lengths = tuple(sorted(get_family(cfg.family).caption_token_lengths(cfg).items()))
    mem = dict(encoder_memory(cfg.family, base_model, size, cfg.resolution, str(dtype).removeprefix("torch."), lengths))
    for name, stored in text_weight_bytes(cfg).items():
        if name in mem:
            mem[name] = (min(mem[name][0], stored), mem[name][1])
    return mem


def plan_caching(cfg, base_model: str | None, size: str, usable_mb: float, calibrate) -> dict:
    """Where each encoder of ``cfg``'s run encodes in the caching phase, and the phase's
    predicted peak: ``{"encode_on_cpu": [...], "peak_mb", "vae_mb", "text_encoders_mb"}``
    (``calibrate``: simulated MiB -> predicted MiB on the target). Encoders that stay resident
    while training (text embeddings not cached, the identity loss's VAE) are left to the step's
    simulation."""
    mem = run_encoder_memory(cfg, base_model, size)
    caches_text = cfg.caches_captions
    text = [n for n in ("text_encoder", "text_encoder_2") if n in mem and caches_text]
    on_cpu: list[str] = []

    def text_stage(names):
        if not names:
            return 0.0
        return calibrate((sum(mem[n][0] for n in names) + max(mem[n][1] for n in names)) / _MiB)

    on_device = sorted(text, key=lambda n: -mem[n][0])
    while on_device and text_stage(on_device) > usable_mb:
        on_cpu.append(on_device.pop(0))  # the largest first
    vae_mb = 0.0
    if cfg.cache_latents != "off" and "vae" in mem:
        vae_mb = calibrate(sum(mem["vae"]) / _MiB)
        if vae_mb > usable_mb and cfg.identity_loss_weight == 0:  # the identity loss decodes on the device
            on_cpu.append("vae")
            vae_mb = 0.0
    text_mb = text_stage(on_device)
    return {"encode_on_cpu": on_cpu, "peak_mb": round(max(vae_mb, text_mb), 1), "vae_mb": round(vae_mb, 1),
            "text_encoders_mb": round(text_mb, 1)}


def _moved(value, device):
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def run_on_cpu(module: torch.nn.Module, device: torch.device):
    """Keep ``module`` on the CPU while the run's other models use ``device``: its inputs are
    moved to the CPU and its outputs back to ``device``. Returns the hooks' handles (remove
    them to undo)."""
    module.to("cpu")

    def before(mod, args, kwargs):
        return _moved(args, "cpu"), _moved(kwargs, "cpu")

    def after(mod, args, kwargs, output):
        return _moved(output, device)

    return [module.register_forward_pre_hook(before, with_kwargs=True),
            module.register_forward_hook(after, with_kwargs=True)]

