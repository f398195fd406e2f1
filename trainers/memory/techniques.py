"""Memory techniques as small named functions, each switchable from TrainConfig."""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def freeze(module: torch.nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


_KEEP = {torch.float8_e4m3fn, torch.float8_e5m2, torch.uint8, torch.int8}


ALIGNMENT = 64  # bytes: what PyTorch's CPU allocator gives every tensor it allocates


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` in memory of its own that starts at an :data:`ALIGNMENT` boundary.

    Weights read from a .safetensors file are views into the file's buffer at whatever offset
    the header left (8-byte aligned, often not 64): CPU matrix kernels take another code path
    for such data than for the copy a block stream or a cast makes, and round differently, so
    the same weights would give results that differ in the last bits (a streamed and an
    in-memory run would not agree). Device memory is always aligned."""
    if t.device.type == "cpu" and t.numel() and t.data_ptr() % ALIGNMENT:
        return t.clone()
    return t


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the frozen (requires_grad=False) parameters and buffers to ``dtype``, each in
    aligned memory of its own (:func:`aligned`); quantized weights (8-bit storage) and their
    scales stay as they are."""
    for m in module.modules():
        quantized = any(t.dtype in _KEEP for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])
        for p in m.parameters(recurse=False):
            if not p.requires_grad and p.dtype not in _KEEP and p.is_floating_point():
                p.data = aligned(p.data.to(dtype))
        if quantized:
            continue
        for name, buf in m.named_buffers(recurse=False):
            if buf.is_floating_point() and buf.dtype not in _KEEP:
                setattr(m, name, buf.to(dtype))


def place_frozen(modules, device, dtype=None) -> None:
    """Freeze ``modules``, move them to ``device`` and (``dtype``) cast their frozen weights."""
    for module in modules:
        freeze(module)
        module.to(device)
        if dtype is not None:
            cast_frozen(module, dtype)


def trainable_to_fp32(module: torch.nn.Module) -> int:
    """Keep trainable weights in fp32 (mixed precision: only compute is half). Returns count."""
    n = 0
    for p in module.parameters():
        if p.requires_grad:
            p.data = p.data.float()
            n += p.numel()
    return n


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def checkpoint_function(recompute_context=None):
    """Non-reentrant ``torch.utils.checkpoint.checkpoint``; ``recompute_context``: a context
    manager factory entered around each recomputation (the simulation's autocast)."""
    import functools

    from torch.utils.checkpoint import checkpoint

    extra = {} if recompute_context is None else {
        "context_fn": lambda: (contextlib.nullcontext(), recompute_context())}
    return functools.partial(checkpoint, use_reentrant=False, **extra)


def set_gradient_checkpointing(unet, enabled: bool, recompute_context=None) -> None:
    """Diffusers' checkpointing of every block (``recompute_context``: see
    :func:`checkpoint_function`)."""
    if enabled:
        unet.enable_gradient_checkpointing(None if recompute_context is None
                                           else checkpoint_function(recompute_context))
    elif getattr(unet, "is_gradient_checkpointing", False):
        unet.disable_gradient_checkpointing()


def set_attention(unet, mode: str) -> None:
    """``sdpa``: PyTorch scaled-dot-product attention; ``sliced``: attention computed in
    slices (lower peak memory where SDPA has no memory-efficient kernel)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if mode == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif mode == "sliced":
        unet.set_attention_slice("auto")
    else:
        raise ValueError(f"attention: '{mode}' is not 'sdpa' or 'sliced'")


def configure_vae(vae, slicing: bool, tiling: bool) -> None:
    (vae.enable_slicing if slicing else vae.disable_slicing)()
    (vae.enable_tiling if tiling else vae.disable_tiling)()


def offload(module: torch.nn.Module) -> None:
    """Move a module off the accelerator (to CPU memory)."""
    module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def empty_cache(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak resident memory on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return host_peak_rss() / 2 ** 20


def host_peak_rss() -> int:
    """This process's peak resident memory in bytes, on every system without Unix-only modules:
    Linux's VmHWM, Windows' peak working set (psutil), else the current resident size."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    info = psutil.Process().memory_info()
    return int(getattr(info, "peak_wset", 0) or info.rss)


def make_optimizer(groups: list[dict], name: str, weight_decay: float, fused: bool = False):
    """``adamw`` (``fused``: its single-kernel implementation), ``adamw8bit`` (bitsandbytes) or
    ``adafactor`` (transformers)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, **({"fused": True} if fused else {}))
    if name == "adamw8bit":
        from ...core.deps import require

        bnb = require("bitsandbytes", "The 8-bit AdamW optimizer")
        return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    raise ValueError(f"optimizer: unknown '{name}'")


def fused_optimizer_unsupported(device: torch.device) -> str | None:
    """Why AdamW's fused kernel is not used on ``device`` (None: it is)."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    if device.type not in _get_fused_kernels_supported_devices():
        return f"AdamW has no fused kernel on {device.type}"
    return None


def build_optimizer(groups: list[dict], cfg, device: torch.device, make=None):
    """The run's optimizer over ``groups``: ``cfg.optimizer`` (``make(groups)`` instead when
    given: the simulation's stand-ins), one tensor at a time when ``fused_backward`` or
    ``full_bf16`` asks (:mod:`.per_tensor`)."""
    from .per_tensor import PerTensorOptimizer

    if make is None:
        fused = False
        if cfg.fused_optimizer:
            why = fused_optimizer_unsupported(device) if cfg.optimizer == "adamw" else \
                f"only AdamW has a fused kernel, not {cfg.optimizer}"
            if why:
                log.warning("fused_optimizer: %s; the optimizer runs unfused", why)
            fused = why is None

        def make(gs):
            return make_optimizer(gs, cfg.optimizer, cfg.weight_decay, fused)

    if cfg.fused_backward or cfg.full_bf16:
        return PerTensorOptimizer(groups, make, fused=cfg.fused_backward, max_grad_norm=cfg.max_grad_norm,
                                  stochastic_rounding=cfg.full_bf16, seed=cfg.seed)
    return make(groups)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(name)


def weight_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision == "bf16":
        return torch.bfloat16
    return torch.float32
