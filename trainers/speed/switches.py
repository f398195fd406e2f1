"""The speed switches that change how the denoiser runs, not what it computes: channels-last
memory format (UNets), and regional compilation of the repeated blocks with CUDA graphs
(``compile: blocks``, ``cuda_graphs``). Each falls back to eager PyTorch with a log line where
it is unsupported, so a config stays valid on every machine.

Regional compilation compiles each repeated block (``Family.repeated_blocks``) rather than the
whole denoiser: the blocks of one kind share one compiled graph, so the compile time is that
of a few blocks, and Inductor's cache (``PERSONA_CACHE``/inductor unless
``TORCHINDUCTOR_CACHE_DIR`` is set) is reused by every later run of the same shapes. Blocks
whose weights are streamed (``stream_blocks``) stay eager: their weights change storage
between calls.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def compile_unsupported(device: torch.device) -> str | None:
    """Why ``torch.compile`` is not used on ``device`` (None: it is)."""
    if device.type != "cuda":
        return f"compile needs a CUDA device (this run is on {device.type})"
    if not hasattr(torch.nn.Module, "compile"):
        return f"torch {torch.__version__} has no Module.compile (torch >= 2.2)"
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (Inductor's GPU kernels need it)"
    return None


def _use_persona_compile_cache() -> None:
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from ...core.paths import cache_root

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")


def apply_speed_switches(model: torch.nn.Module, family, cfg, device: torch.device,
                         skip: tuple[torch.nn.Module, ...] = ()) -> dict:
    """Apply ``cfg``'s speed switches to ``model``. Returns what was applied
    (``{"channels_last": bool, "compiled_blocks": int, "cuda_graphs": bool}``)."""
    applied = {"channels_last": False, "compiled_blocks": 0, "cuda_graphs": False}
    if cfg.channels_last:
        if family.convolutional:
            model.to(memory_format=torch.channels_last)
            applied["channels_last"] = True
        else:
            log.info("channels_last: the %s denoiser has no convolutions; ignored", family.name)
    if cfg.compile == "blocks":
        why = compile_unsupported(device)
        if why:
            log.warning("compile: %s; the blocks run eagerly%s", why,
                        " (and without CUDA graphs)" if cfg.cuda_graphs else "")
            return applied
        _use_persona_compile_cache()
        mode = "reduce-overhead" if cfg.cuda_graphs else None  # reduce-overhead: CUDA graphs
        skipped = {id(m) for m in skip}
        for block in family.repeated_blocks(model):
            if id(block) not in skipped:
                block.compile(mode=mode, dynamic=False)
                applied["compiled_blocks"] += 1
        applied["cuda_graphs"] = cfg.cuda_graphs
        log.info("compile: %d blocks compiled%s", applied["compiled_blocks"],
                 " with CUDA graphs" if cfg.cuda_graphs else "")
    return applied

