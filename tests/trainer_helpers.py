"""Small helpers shared by the trainer tests."""
from __future__ import annotations

from comfyui_persona.trainers.config import TrainConfig


def tiny_config(model, dataset, out, **fields) -> TrainConfig:
    # the switches as each test sets them (the default, memory 'auto', would plan them on a GPU)
    base = dict(base_model=str(model), dataset=str(dataset), output_dir=str(out), resolution=64,
                steps=3, rank=4, alpha=4, learning_rate=5e-3, checkpoint_every=0, seed=0, memory="manual")
    base.update(fields)
    return TrainConfig(**base)
