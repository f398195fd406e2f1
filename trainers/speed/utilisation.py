"""Speed as model-FLOPs utilisation (MFU): the FLOPs of one optimizer step over the time it
took and the device's peak.

- **FLOPs per step** are counted by ``torch.utils.flop_counter.FlopCounterMode`` over the
  trainer's own step (``simulate.run_steps``: forward, backward, every micro-step) on the
  ``meta`` device, with gradient checkpointing and streaming off: model FLOPs, not the
  recomputation checkpointing adds, so a configuration that recomputes shows as less
  utilised. Counted once per architecture and config, in seconds, without the GPU.
- **The peak** is the device's dense bf16 tensor-core FLOP/s from its data sheet
  (:data:`PEAK_BF16_TFLOPS`, matched on the CUDA device name), named in every report;
  ``PERSONA_PEAK_TFLOPS`` sets it for other devices. A CPU has no such figure: there the
  achieved TFLOP/s are reported and MFU is left empty.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

PEAK_BF16_TFLOPS = {  # dense (no sparsity), from the vendors' data sheets
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.5,
    "H100": 756.5, "A100": 312.0, "L40S": 362.05, "L4": 121.0, "RTX 4090": 165.2, "RTX 3090": 71.0,
}
PEAK_ENV = "PERSONA_PEAK_TFLOPS"


def device_peak(device) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s or None, the device's name and where the figure comes from)."""
    device = torch.device(device)
    if os.environ.get(PEAK_ENV):
        tflops = float(os.environ[PEAK_ENV])
        return tflops * 1e12, f"{_name(device)} ({tflops:g} TFLOP/s from {PEAK_ENV})"
    name = _name(device)
    if device.type == "cuda":
        for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # the most specific match
            if key.lower() in name.lower():
                return PEAK_BF16_TFLOPS[key] * 1e12, f"{name} ({PEAK_BF16_TFLOPS[key]:g} TFLOP/s dense bf16)"
    return None, f"{name} (peak unknown: set {PEAK_ENV})"


def _name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


_FLOPS: dict[str, float] = {}
# what changes the model FLOPs of a step: the architecture (with base_model and size) and these
# fields; precision, optimizer, quantized storage and the memory switches do not (the counter
# counts matrix products and convolutions, not elementwise work)
FLOP_FIELDS = ("family", "method", "resolution", "batch_size", "gradient_accumulation", "rank", "target_modules",
               "train_text_encoder", "use_dora", "prior_preservation", "cache_latents", "cache_text_embeddings",
               "shuffle_tags", "identity_loss_weight", "t5_max_length", "guidance")


def _flops_key(cfg, base_model, size) -> str:
    import json

    from ..memory.planner import arch_id

    fields = {f: getattr(cfg, f) for f in FLOP_FIELDS}
    return json.dumps([arch_id(cfg.family, base_model, size), fields, cfg.lora_targets], sort_keys=True, default=str)


def step_flops(cfg, base_model: str | None = None, size: str = "real") -> float:
    """Model FLOPs of one optimizer step of ``cfg`` (see the module's text); remembered per
    architecture and the fields that change them, in memory and in the cache root, so a run
    of a known shape does not count again."""
    import copy
    import hashlib

    from torch.utils.flop_counter import FlopCounterMode

    from ..memory.planner import read_cache, write_cache
    from ..memory.simulate import architecture, run_steps

    key = hashlib.sha256(_flops_key(cfg, base_model, size).encode()).hexdigest()[:24]
    if key not in _FLOPS:
        stored = read_cache("flops.json")
        if key not in stored:
            counted = cfg.model_copy(update={"gradient_checkpointing": False, "checkpoint_blocks": 0,
                                             "stream_blocks": 0, "compile": "off", "cuda_graphs": False,
                                             "fused_optimizer": False})
            with torch.inference_mode(False), torch.enable_grad():
                comps = copy.deepcopy(architecture(cfg.family, base_model, size))
                counter = FlopCounterMode(display=False)
                with counter:
                    run_steps(comps, counted, "meta", steps=1, fused_attention=False)
            stored = read_cache("flops.json")
            stored[key] = float(counter.get_total_flops())
            write_cache("flops.json", stored)
        _FLOPS[key] = stored[key]
    return _FLOPS[key]


def utilisation(flops: float | None, seconds: float, peak: float | None) -> dict:
    """The log fields: achieved TFLOP/s and MFU (None where a figure is missing)."""
    if not flops or seconds <= 0:
        return {"tflops": None, "mfu": None}
    achieved = flops / seconds
    return {"tflops": round(achieved / 1e12, 4), "mfu": round(achieved / peak, 4) if peak else None}
