"""The event protocol of a training process: one JSON object per line on its stdout, so
whoever started it (the Train node's child process, a script) can follow it.

- ``{"event": "plan", "text": ..., "predicted_peak_mb": ..., ...}``: the memory plan the run
  trains with (``memory: auto``), before the first step;
- ``{"event": "log", "step": N, "loss": ..., ...}``: one per step (a ``log.jsonl`` record);
- ``{"event": "done", "run_dir": ..., "lora": ..., "steps": ..., ...}``: the run's summary,
  last (``"stopped": true`` when it stopped early on request, after a checkpoint).

Errors go to stderr and the exit code (0 done, 2 a config or checkpoint error, other: a
crash); lines that are not events (library output) are ignored by :func:`decode`.
"""
from __future__ import annotations

import json

PLAN = "plan"
LOG = "log"
DONE = "done"


def encode(kind: str, data: dict) -> str:
    return json.dumps({"event": kind, **data})


def decode(line: str) -> dict | None:
    """The event on ``line``, or None when the line is not an event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def summary(result) -> dict:
    """The ``done`` event of a :class:`~.loop.TrainResult`."""
    return {"run_dir": str(result.run_dir), "lora": str(result.lora_path) if result.lora_path else None,
            "steps": result.steps_done, "first_loss": result.first_loss, "final_loss": result.final_loss,
            "peak_memory_mb": round(result.peak_memory_mb, 1), "resumed_from": result.resumed_from,
            "stopped": result.stopped, "ema": str(result.ema_path) if result.ema_path else None,
            "best": str(result.best_path) if result.best_path else None, "best_step": result.best_step}


def plan_event(plan) -> dict:
    """The ``plan`` event of a memory plan (``planner.Plan``)."""
    return {"text": plan.describe(), "summary": plan.summary(), "switches": plan.switches,
            "budget_mb": round(plan.budget_mb, 1),
            "usable_mb": plan.usable_mb, "predicted_peak_mb": round(plan.predicted_peak_mb, 1),
            "whole_run_peak_mb": round(plan.whole_run_peak_mb, 1)}
