"""Resumable checkpoints: written atomically, the newest K kept, loaded with clear errors.

A checkpoint folder ``checkpoints/step-000200/`` holds the trainable weights
(``trainable.safetensors``), the optimizer and LR-scheduler states (``optimizer.pt``,
``scheduler.pt``, read back with ``weights_only=True``), ``state.json`` (step, config
digest) and, when the run keeps them, further named tensor sets (``ema.safetensors``: the EMA
of the trained weights). Randomness is re-seeded from (seed, step) every step, so no RNG state is needed
for a resumed run to follow the same path as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json")


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and not p.name.endswith(".tmp"))


def save_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer,
                    scheduler, config_digest: str, keep: int,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()},
              str(tmp / "trainable.safetensors"))
    for name, tensors in (extra or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config_digest": config_digest}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, config_digest: str, extra: tuple[str, ...] = ()) -> dict:
    """Returns {'step', 'trainable', 'optimizer', 'scheduler', and each of ``extra``} or raises
    CheckpointError."""
    from safetensors.torch import load_file

    missing = [f for f in (*FILES, *(f"{name}.safetensors" for name in extra)) if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' is incomplete: missing {', '.join(missing)}. "
                              f"Delete that folder to resume from the previous checkpoint.")
    try:
        state = json.loads((path / "state.json").read_text())
        trainable = load_file(str(path / "trainable.safetensors"))
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        scheduler = torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True)
        sets = {name: load_file(str(path / f"{name}.safetensors")) for name in extra}
    except Exception as exc:  # any decoding failure of any of the files is "corrupt"
        raise CheckpointError(f"checkpoint '{path}' is corrupt ({type(exc).__name__}: {exc}). "
                              f"Delete that folder to resume from the previous checkpoint.") from exc
    if state.get("config_digest") != config_digest:
        raise CheckpointError(f"checkpoint '{path}' was written by a different config "
                              f"(digest {state.get('config_digest')} != {config_digest}); "
                              f"resume with the run's own config.json")
    return {"step": int(state["step"]), "trainable": trainable, "optimizer": optimizer,
            "scheduler": scheduler, **sets}


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None
