"""Host-to-accelerator copies of the small tensors a training step makes on the CPU (noise,
timesteps, cached latents and embeddings, loss weights) without making the host wait.

A copy from ordinary (pageable) host memory to CUDA is synchronous in PyTorch: it waits for
every kernel already queued on the stream, so the host cannot queue the next step while the
GPU works on this one. A copy from page-locked memory can be asynchronous; the staging block
comes from PyTorch's caching host allocator, which reuses it only after the copy is done.
The values are drawn on the CPU (from the run's seeded generator) so that a CPU and a GPU run,
and a resumed run, see the same noise."""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (in ``dtype``, if given); from the CPU to CUDA through page-locked
    memory without a host synchronisation."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype) if dtype is not None else t.to(device)
