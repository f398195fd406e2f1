"""Phase: resume. What a checkpoint holds of a run (every trained tensor by name, the
optimizer and the schedule), and putting it back. Tensor names start with ``unet.`` for
the denoiser (whatever the family; the name is part of the checkpoint format) and
``text_encoder.`` / ``text_encoder_2.`` for trained text encoders."""
from __future__ import annotations

import logging

import torch

from ..outputs.checkpoint import latest_checkpoint, load_checkpoint
from ..outputs.run_dir import truncate_log

log = logging.getLogger(__name__)

PREFIXES = (("unet.", "denoiser"), ("text_encoder.", "text_encoder"), ("text_encoder_2.", "text_encoder_2"))


def trainable_state(comps, cfg) -> dict[str, torch.Tensor]:
    """Every trained tensor (LoRA adapters, or the whole denoiser for DreamBooth), by name."""
    state = {}
    for prefix, part in PREFIXES:
        model = getattr(comps, part)
        if model is not None and (part == "denoiser" or cfg.train_text_encoder):
            state.update({f"{prefix}{n}": p for n, p in model.named_parameters() if p.requires_grad})
    return state


def load_trainable(comps, tensors: dict[str, torch.Tensor]) -> None:
    for prefix, part in PREFIXES:
        chunk = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not chunk:
            continue
        own = getattr(comps, part).state_dict()
        unknown = [k for k in chunk if k not in own]
        if unknown:
            raise RuntimeError(f"checkpoint tensors do not fit the model: {unknown[:3]}")
        with torch.no_grad():
            for k, v in chunk.items():
                own[k].copy_(v)


def check_resumable(cfg) -> None:
    """The run of ``cfg`` has a checkpoint that loads and was written by this config: checked
    before any model loads, so a missing or broken one is reported at once."""
    from pathlib import Path

    from ..config import TrainConfig

    run_dir = Path(cfg.output_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise TrainConfig.field_error("checkpoint_every", f"cannot resume: '{run_dir}' has no checkpoint yet "
                                      f"(checkpoint_every={cfg.checkpoint_every}); start the run again instead")
    load_checkpoint(ckpt, cfg.digest(), ("ema",) if cfg.ema else ())


def resume(s, optimizer, lr_scheduler, ema=None) -> int:
    """Restore the run's last checkpoint (and the EMA it holds); returns the step it was
    written at."""
    from ..config import TrainConfig

    ckpt = latest_checkpoint(s.run_dir)
    if ckpt is None:
        raise TrainConfig.field_error("checkpoint_every", f"cannot resume: '{s.run_dir}' has no checkpoint yet "
                                      f"(checkpoint_every={s.cfg.checkpoint_every}); start the run again instead")
    state = load_checkpoint(ckpt, s.digest, ("ema",) if ema is not None else ())
    load_trainable(s.comps, state["trainable"])
    if ema is not None:
        ema.load(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["scheduler"])
    truncate_log(s.run_dir, state["step"])
    log.info("resumed %s at step %d", s.run_dir, state["step"])
    return state["step"]
