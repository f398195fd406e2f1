"""Captions as each step sees them: caption dropout (the image trains on its class caption, or
on none, with probability ``caption_dropout``) and tag shuffling (the comma-separated tags in
a new order at every step, the first tag, which names the subject, kept first). Every draw
comes from the step's seeded generator, so runs repeat exactly and resume on the same path."""
from __future__ import annotations

import torch


def dropout_caption(cfg) -> str:
    return cfg.fill(cfg.class_prompt) if cfg.caption_dropout_to == "class" else ""


def step_caption(caption: str, cfg, gen: torch.Generator) -> str:
    if cfg.caption_dropout > 0 and float(torch.rand(1, generator=gen)) < cfg.caption_dropout:
        return dropout_caption(cfg)
    if cfg.shuffle_tags:
        tags = [t.strip() for t in caption.split(",") if t.strip()]
        if len(tags) > 2:
            rest = tags[1:]
            order = torch.randperm(len(rest), generator=gen).tolist()
            return ", ".join([tags[0]] + [rest[i] for i in order])
    return caption
