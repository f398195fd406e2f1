"""Exponential moving average (EMA) of the trained weights.

Every ``ema_every`` optimizer steps each trained tensor's shadow moves toward it:

    shadow <- decay * shadow + (1 - decay) * weight

starting from the weights as training begins (the LoRA's initial values, or the base model for
a full DreamBooth). The shadow is kept in fp32, on the training device or (``ema_on_cpu``) in
CPU memory, saved in each checkpoint (``ema.safetensors``) and loaded on resume, so a resumed
run's EMA is bit-for-bit the one of an uninterrupted run. Validation samples and the exported
LoRA use the EMA weights (:meth:`EMA.applied`); ``ema_export`` chooses whether the EMA file
replaces the raw one or is written beside it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

FILE = "ema.safetensors"


class EMA:
    def __init__(self, trainable: dict[str, torch.Tensor], decay: float, every: int = 1,
                 on_cpu: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay: must be between 0 and 1 (exclusive), got {decay}")
        self.decay, self.every = float(decay), int(every)
        self.params = trainable  # name -> the live parameter
        device = torch.device("cpu") if on_cpu else None
        self.shadow = {k: p.detach().to(device=device or p.device, dtype=torch.float32, copy=True)
                       for k, p in trainable.items()}

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Move the shadow toward the weights after optimizer step ``step`` (1-based) when
        ``step`` is a multiple of ``every``; returns whether it moved."""
        if step % self.every:
            return False
        for k, p in self.params.items():
            s = self.shadow[k]
            s.mul_(self.decay).add_(p.detach().to(s.device, torch.float32), alpha=1.0 - self.decay)
        return True

    def state(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        unknown = sorted(set(tensors) - set(self.shadow))
        if missing or unknown:
            raise RuntimeError(f"the checkpoint's EMA does not fit the model: missing {missing[:3]}, "
                               f"unknown {unknown[:3]}")
        with torch.no_grad():
            for k, v in tensors.items():
                self.shadow[k].copy_(v)

    @contextmanager
    def applied(self):
        """The EMA weights in the model for the duration of the block, the raw ones after."""
        saved = {k: p.detach().clone() for k, p in self.params.items()}
        try:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(self.shadow[k].to(p.device, p.dtype))
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])
