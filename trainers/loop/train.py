"""The training loop: ``train(cfg, callbacks) -> TrainResult``.

Reference 000 Algorithm 1 (memory-optimised DreamBooth) and reference 002's prior
preservation, on diffusers + peft + accelerate, in named phases:

1. ``setup``: memory plan, run directory, device, the base model frozen and placed;
2. ``data``: dataset, class images, latent and text-embedding caches, identity loss;
3. ``step`` (here: :func:`train_steps`): what trains, optimizer and schedule, resume, then
   each step's micro-steps, clipping, logging, checkpoints and validation;
4. ``finish``: the plan's prediction against the measured peak, loss chart, export.

The UI stays out: progress, log records, validation results and cancellation go through
:class:`Callbacks`.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import TrainConfig
from ..memory import techniques as memory
from ..memory.per_tensor import per_tensor_of
from ..outputs.best import Best, selection_score
from ..outputs.checkpoint import save_checkpoint
from ..outputs.run_dir import append_log
from ..speed.switches import eager_on_failure
from ..speed.utilisation import device_peak, step_flops, utilisation
from .data import TrainingData, prepare_data, step_batch
from .ema import EMA
from .finish import finish
from .resume import check_resumable, resume as restore, trainable_state
from .setup import Session, setup
from .step import forward_backward, make_trainable, release_streaming

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised inside the loop when ``Callbacks.should_stop`` says so (after a checkpoint)."""


@dataclass
class Callbacks:
    on_start: Callable[[dict], None] | None = None
    on_log: Callable[[dict], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    on_validation: Callable[[int, Path, dict], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    lora_path: Path | None
    diffusers_lora_dir: Path | None
    steps_done: int
    first_loss: float | None
    final_loss: float | None
    peak_memory_mb: float
    stopped: bool = False
    resumed_from: int = 0
    class_images_generated: int = 0
    ema_path: Path | None = None  # ema_export 'beside': the EMA LoRA (or DreamBooth checkpoint)
    best_path: Path | None = None  # best/lora.safetensors: the best validation step by identity
    best_step: int | None = None
    model_dir: Path | None = None  # DreamBooth: diffusers folder
    checkpoint_path: Path | None = None  # DreamBooth: single-file checkpoint
    records: list[dict] = field(default_factory=list)
    plan: object = None  # the memory plan (memory="auto")


def train(cfg: TrainConfig, callbacks: Callbacks | None = None, resume: bool = False) -> TrainResult:
    """Train ``cfg`` into ``cfg.output_dir``; with ``resume``, continue from its last checkpoint."""
    cb = callbacks or Callbacks()
    cfg.check_paths()  # every config error surfaces before any model loads
    if resume:
        check_resumable(cfg)  # and a missing or broken checkpoint
    s = setup(cfg, resume)
    data = prepare_data(s)
    return train_steps(s, data, cb, resume)


def _step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + step * 1009 + micro * 31 + rank) % (2 ** 63))


def _identity_term(s: Session, data: TrainingData, step: int, group: int):
    """``extra_loss`` of the micro-step: the identity loss on the instance samples (of the
    square face crops' bucket)."""
    cfg = s.cfg
    if data.identity is None or step % cfg.identity_every or group != data.identity_group:
        return None

    def add(p, loss, parts):
        n = cfg.batch_size  # instance samples only
        id_loss, used = data.identity(s.comps, p, n)
        if id_loss is not None:
            loss = loss + cfg.identity_loss_weight * id_loss
            parts["loss_identity"] = id_loss
            parts["identity_samples"] = torch.tensor(float(used))
        return loss, parts

    return add


def train_steps(s: Session, data: TrainingData, cb: Callbacks, resume: bool) -> TrainResult:
    from diffusers.optimization import get_scheduler

    cfg, comps, acc = s.cfg, s.comps, s.accelerator
    groups = make_trainable(comps, cfg, s.device, s.dtype)
    trained = [comps.denoiser] + (comps.text_encoders if cfg.train_text_encoder else [])
    for model in trained:
        model.train()
    optimizer = memory.build_optimizer(groups, cfg, s.device)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    if cfg.fused_backward and acc.num_processes > 1:
        # each tensor's hook averages its gradient over the processes (memory/per_tensor.py):
        # no DistributedDataParallel wrapper, whose buckets would reduce after the hooks stepped
        _same_start_everywhere(groups)
        prepared = [*trained, acc.prepare(optimizer)]
    else:
        prepared = acc.prepare(*trained, optimizer)
    per_tensor = per_tensor_of(optimizer)
    speed = _speed_reference(s)
    denoiser_ddp, optimizer, te_ddp = prepared[0], prepared[-1], list(prepared[1:-1])
    ema = EMA(trainable_state(comps, cfg), cfg.ema_decay, cfg.ema_every, cfg.ema_on_cpu) if cfg.ema else None
    start_step = restore(s, optimizer, lr_scheduler, ema) if resume else 0
    if cb.on_start:
        cb.on_start({"denoiser": comps.denoiser, "text_encoder": comps.text_encoder, "vae": comps.vae,
                     "text_encoder_2": comps.text_encoder_2, "plan": s.plan,
                     "optimizer": optimizer, "start_step": start_step, "device": s.device,
                     "trainable_parameters": sum(p.numel() for g in groups for p in g["params"])})
    result = TrainResult(s.run_dir, None, None, start_step, None, None, 0.0, resumed_from=start_step,
                         class_images_generated=data.class_images_generated)
    memory.reset_peak_memory(s.device)
    params = [p for g in groups for p in g["params"]]
    best = Best(s.run_dir)
    if best.step is not None and (best.folder / "lora.safetensors").is_file():
        result.best_step, result.best_path = best.step, best.folder / "lora.safetensors"
    try:
        since, t_since = start_step, time.perf_counter()
        for step in range(start_step + 1, cfg.steps + 1):
            parts_sum = eager_on_failure(
                comps.denoiser, lambda: _micro_steps(s, data, step, denoiser_ddp, per_tensor),
                lambda: optimizer.zero_grad(set_to_none=True))  # a failed step's gradients dropped
            if cfg.max_grad_norm > 0 and not cfg.fused_backward:  # fused: clipped per tensor in backward
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            lr_used = lr_scheduler.get_last_lr()[0]
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=cfg.grad_set_to_none)
            if ema is not None:
                ema.update(step)
            result.steps_done = step
            last = step == cfg.steps
            if step % cfg.log_every == 0 or last or step == start_step + 1:
                values = {k: v.item() for k, v in parts_sum.items()}  # the host waits for the device here
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(f"loss became {values['loss']} at step {step}; "
                                             f"lower learning_rate or use bf16 instead of fp16")
                now = time.perf_counter()
                record = _record(s, step, values, lr_used, (now - t_since) / (step - since),
                                 data.classes is not None, speed)
                since, t_since = step, now
                result.records.append(record)
                result.first_loss = result.first_loss if result.first_loss is not None else record["loss"]
                result.final_loss = record["loss"]
                if s.main:
                    append_log(s.run_dir, record)
                    if cb.on_log:
                        cb.on_log(record)
            if s.main and cb.on_progress:
                cb.on_progress(step, cfg.steps)
            stopping = bool(cb.should_stop and cb.should_stop())
            if s.main and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or last or stopping):
                save_checkpoint(s.run_dir, step, trainable_state(comps, cfg), optimizer, lr_scheduler,
                                s.digest, cfg.keep_checkpoints, {"ema": ema.state()} if ema else None)
            if s.main and cfg.validate_every and (step % cfg.validate_every == 0 or last):
                with ema.applied() if ema else nullcontext():
                    eager_on_failure(comps.denoiser,
                                     lambda: _validate(s, data, step, cb, best, result, "ema" if ema else "raw"))
            if stopping and not last:
                raise TrainingStopped(f"stopped at step {step}")
    except TrainingStopped:
        result.stopped = True
    release_streaming(comps.denoiser)
    finish(s, result, acc.unwrap_model(denoiser_ddp), [acc.unwrap_model(t) for t in te_ddp], ema)
    return result


def _micro_steps(s: Session, data: TrainingData, step: int, denoiser, per_tensor) -> dict[str, torch.Tensor]:
    """One optimizer step's micro-steps (forward and backward of each micro-batch): the mean of
    their loss parts, left on the device (no host sync until a logged step reads them)."""
    cfg, acc = s.cfg, s.accelerator
    parts_sum: dict[str, torch.Tensor] = {}
    for micro in range(cfg.gradient_accumulation):
        gen = _step_generator(cfg.seed, step, micro, s.rank)
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))  # dropout
        b = step_batch(s, data, gen)
        sync = micro == cfg.gradient_accumulation - 1
        if per_tensor is not None:  # fused backward: the tensors step in the last micro-step
            per_tensor.armed = sync
        no_sync = acc.no_sync(denoiser) if not sync and acc.num_processes > 1 else nullcontext()
        with no_sync:
            loss, parts = forward_backward(s.comps, denoiser, b.latents, b.cond, gen, cfg, s.dtype, acc.autocast(),
                                           cfg.gradient_accumulation, _identity_term(s, data, step, b.group),
                                           acc.backward, b.pixel_weight, b.image_weight)
        for k, v in {"loss": loss, **parts}.items():
            v = v.float() / cfg.gradient_accumulation
            parts_sum[k] = parts_sum[k] + v if k in parts_sum else v
    return parts_sum


def _same_start_everywhere(groups: list[dict]) -> None:
    """Every process starts from the main process's trained weights (what DDP's wrapper does
    when it is made)."""
    import torch.distributed as dist

    with torch.no_grad():
        for g in groups:
            for p in g["params"]:
                dist.broadcast(p.data, src=0)


def _speed_reference(s: Session) -> dict:
    """The model FLOPs of one step and the device's peak, for each log line's utilisation."""
    peak, name = device_peak(s.device)
    try:
        flops = step_flops(s.cfg, s.cfg.base_model, "real")
    except (RuntimeError, ValueError, NotImplementedError) as exc:  # a model the counter cannot run
        log.warning("speed: FLOPs per step not counted (%s); the log has no utilisation", exc)
        flops = None
    if flops:
        log.info("speed: %.3f TFLOP per step; device %s", flops / 1e12, name)
    return {"flops": flops, "peak": peak, "device": name}


def _record(s: Session, step: int, parts_sum: dict, lr: float, seconds: float, has_classes: bool,
            speed: dict | None = None) -> dict:
    """One log.jsonl line (the mean over processes in data-parallel training)."""
    cfg, acc = s.cfg, s.accelerator
    if acc.num_processes > 1:
        keys = sorted(parts_sum)
        mean = acc.reduce(torch.tensor([parts_sum[k] for k in keys], device=s.device), "mean")
        parts_sum = dict(zip(keys, mean.tolist()))
    return {"step": step, **{k: round(v, 6) for k, v in parts_sum.items()},
            "batch": {"instance": cfg.batch_size, "class": cfg.batch_size if has_classes else 0},
            "lr": lr, "peak_memory_mb": round(memory.peak_memory_mb(s.device), 1),
            "step_seconds": round(seconds, 4), "processes": acc.num_processes,
            "samples_per_s": round(cfg.batch_size * cfg.gradient_accumulation * acc.num_processes / seconds, 3),
            **utilisation((speed or {}).get("flops"), seconds, (speed or {}).get("peak"))}


def _validate(s: Session, data: TrainingData, step: int, cb: Callbacks, best: Best, result: TrainResult,
              weights: str) -> None:
    """Validation samples and their identity; a new best step by identity is exported to best/."""
    from .finish import export
    from .validation import validate

    info = validate(s.comps, s.cfg, s.run_dir, step, s.device, s.dtype, data.validation_cond)
    info["selection_score"] = selection_score(info)
    if best.consider(step, info):
        files = []
        if s.cfg.method == "lora":
            trained = s.comps.text_encoders if s.cfg.train_text_encoder else []
            files.append(export(s, result, s.comps.denoiser, trained, weights, folder=best.folder))
            result.best_path = files[0]
        best.write(info, files)
        result.best_step = step
        info["best"] = True
    append_log(s.run_dir, {"step": step, "validation": info})
    if cb.on_validation:
        cb.on_validation(step, Path(info["grid"]), info)
