"""Phase 1 of a run, setup: the memory plan (``memory: auto``), the run directory, the
device and accelerate, and the base model loaded and frozen (a run that loads in stages,
``host_memory.loads_in_stages``, reads its denoiser in phase 2, once the captions are encoded
and the text encoders freed: :func:`ready_denoiser`).

:class:`Session` is what the later phases share.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.deps import require
from ...models.families import Family, get_family
from ..config import TrainConfig
from ..memory import techniques as memory
from ..memory.host_memory import check_host_memory, loads_in_stages, reads_fp8_as_stored
from ..outputs.run_dir import prepare_run_dir

log = logging.getLogger(__name__)


@dataclass
class Session:
    cfg: TrainConfig  # the config the run trains with (after the memory plan)
    requested: TrainConfig  # the config as given (config.json; resume checks its digest)
    plan: object | None
    run_dir: Path
    accelerator: object
    device: torch.device
    dtype: torch.dtype  # frozen weights and compute
    family: Family
    comps: object  # models.components.Components

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def digest(self) -> str:
        return self.requested.digest()


def loading_processes() -> int:
    """How many processes on this machine load the base model at once (a distributed launch's
    local processes)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def plan_memory(cfg: TrainConfig):
    """(config to train with, plan or None): ``memory: auto`` lets the planner set the switches."""
    if cfg.memory != "auto":
        return cfg, None
    device = memory.resolve_device(cfg.device)
    if device.type != "cuda" and cfg.vram_budget_gb == 0:
        return cfg, None  # no accelerator memory to fit: the switches as set
    from ..memory.planner import plan_for_config

    plan = plan_for_config(cfg, device, processes=loading_processes())
    log.info("memory plan:\n%s", plan.describe())
    return plan.apply(cfg), plan


def make_accelerator(cfg: TrainConfig, device: torch.device):
    accelerate = require("accelerate", "Training")
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise TrainConfig.field_error("mixed_precision", "fp16 needs a CUDA device; use 'bf16' or 'no' on the CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one state per process; several runs in one process (the library
        # API, tests) may differ in precision. A distributed launch keeps the launcher's state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return accelerate.Accelerator(mixed_precision=cfg.mixed_precision, cpu=device.type == "cpu")


def load_base(cfg: TrainConfig, defer_denoiser: bool = False):
    from ...models.loading import load_components

    return load_components(cfg.family, cfg.base_model, defer_denoiser=defer_denoiser,
                           **{n: getattr(cfg, n) for n in get_family(cfg.family).separate_files if getattr(cfg, n)})


def stored_fp8(cfg: TrainConfig, plan) -> tuple[str, ...] | None:
    """What the denoiser's loader is given as ``keep_fp8``: the layers its family keeps out of
    fp8 where the run reads a file's fp8 weights as stored (``reads_fp8_as_stored``), else None."""
    phase = (getattr(plan, "class_images", None) or {}).get("quantize")
    return get_family(cfg.family).quantize_skip if reads_fp8_as_stored(cfg, phase) else None


def ready_denoiser(s: Session) -> None:
    """The denoiser read (where its loading was deferred; an fp8 file's weights as stored where
    the run quantizes to fp8 anyway), the training adapter merged into it and frozen."""
    from ...models.fp8_linear import Fp8Linear

    cfg, comps = s.cfg, s.comps
    comps.load_denoiser(stored_fp8(cfg, s.plan))
    kept = sum(isinstance(m, Fp8Linear) for m in comps.denoiser.modules())
    if kept:
        log.info("fp8: %d linear layers of '%s' read as stored (the file's values and scales)", kept,
                 Path(cfg.base_model).name)
    if cfg.training_adapter:
        from ...models.adapters import merge_adapter

        merged = merge_adapter(comps.denoiser, cfg.training_adapter)
        log.info("training adapter: %d layers of '%s' merged into the frozen base (not exported)", merged,
                 Path(cfg.training_adapter).name)
    memory.freeze(comps.denoiser)


def setup(requested: TrainConfig, resume: bool) -> Session:
    cfg, plan = plan_memory(requested)
    run_dir = Path(cfg.output_dir)
    prepare_run_dir(run_dir, requested, resume)
    accelerator = make_accelerator(cfg, memory.resolve_device(cfg.device))
    device = accelerator.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.manual_seed(cfg.seed)
    need = check_host_memory(cfg, processes=loading_processes(),
                             keep_fp8=stored_fp8(cfg, plan) is not None)
    staged = loads_in_stages(cfg)
    log.info("host memory: loading the base model needs about %.1f GB%s", need / 2 ** 30,
             " (the text encoders freed once the captions are encoded, before the denoiser loads)" if staged else "")
    comps = load_base(cfg, defer_denoiser=True)  # read by ready_denoiser, now or once the captions are encoded
    for module in [comps.vae, *comps.text_encoders]:
        memory.freeze(module)
    # every model reaches the device one phase at a time, cast on the CPU first (trainers/loop/data.py)
    memory.configure_vae(comps.vae, cfg.vae_slicing, cfg.vae_tiling)
    s = Session(cfg, requested, plan, run_dir, accelerator, device,
                memory.weight_dtype(cfg.mixed_precision, device), get_family(cfg.family), comps)
    if not staged:  # else trainers/loop/data.py reads it once the text encoders are gone
        ready_denoiser(s)
    return s
