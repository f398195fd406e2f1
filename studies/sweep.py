"""Running a study: every run of a SweepConfig trained in its own process (one after another,
or ``jobs`` at once, each on its GPU), each one's log streamed with its name, its last-step
samples measured, and one table of all runs with the best one picked.

A killed sweep started again skips the runs that finished (their ``result.json``), resumes an
interrupted one from its last checkpoint, and starts again one that had none. Every run's
config is validated before the first one trains, so an invalid axis costs nothing.

Outputs in ``output_dir``: ``sweep.json``, ``sweep.csv``, ``sweep.md`` (one row per run: what
differs from the base, time, peak memory, loss, identity on training and held-out photos,
copy-paste, CLIP-T, diversity, Q_global, the score), ``chart-<axis>.png`` per axis (the score
and identity against the axis value, averaged over the other axes), and ``best.json``. The
best run is the one with the highest score of ``trainers.outputs.best`` (held-out identity
minus copying, faceless images counting 0) at its last step; ties keep the earlier run.
"""
from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..trainers.config import TrainConfig, with_preset
from .config import REGIMES, SweepConfig

log_ = logging.getLogger(__name__)

COLUMNS = ["run", "differs", "seconds", "peak_memory_mb", "final_loss", "identity", "identity_holdout",
           "copy_paste", "clip_t", "diversity", "q_global", "score"]


@dataclass
class Run:
    name: str
    changes: dict  # what differs from the base (preset included)
    config: TrainConfig
    result: dict = field(default_factory=dict)


def _name(changes: dict) -> str:
    text = "_".join(f"{k}={v}" for k, v in changes.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)[:100]


def token_variants(cfg: SweepConfig) -> list[dict]:
    """The token ablation: every image captioned with each identifier, then with the class alone
    (the class noun stands in the token's place, so prompts name no identifier)."""
    class_noun = cfg.base.get("class_noun", TrainConfig.model_fields["class_noun"].default)
    runs = [{"name": f"token={t}", "token": t, "caption_source": "instance_prompt",
             "instance_prompt": "a photo of {token} {class}"} for t in cfg.tokens]
    runs.append({"name": "class-only", "token": class_noun, "caption_source": "instance_prompt",
                 "instance_prompt": "a photo of {token}",
                 "validation_prompts": [p.replace("{token} {class}", "{token}") for p in cfg.evaluation.prompts]})
    return runs


def plan(cfg: SweepConfig) -> list[Run]:
    """Every run's validated TrainConfig (a ConfigError names the run and the field)."""
    if cfg.study == "regimes":
        variants = [{"name": r, "preset": r} for r in REGIMES]
    elif cfg.study == "tokens":
        variants = token_variants(cfg)
    elif cfg.axes:
        keys = list(cfg.axes)
        variants = [dict(zip(keys, combo)) for combo in itertools.product(*cfg.axes.values())]
    else:
        variants = [dict(v) for v in cfg.variants]
    ev = cfg.evaluation
    runs, seen = [], set()
    for i, variant in enumerate(variants):
        name = str(variant.pop("name", "")) or _name(variant)
        # one plain folder name: no separators, no '..', at most 100 characters
        name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.=-]+", "-", name)).strip(".")[:100] or f"run-{i + 1}"
        if name in seen:
            name = f"{name}-{i + 1}"
        seen.add(name)
        preset = variant.pop("preset", cfg.preset)
        out = Path(cfg.output_dir) / name
        base = {**cfg.base, "output_dir": str(out), "validation_prompts": ev.prompts, "validation_seeds": ev.seeds,
                "validation_steps": ev.steps, "validation_identity": ev.embedder}
        fields = with_preset(base, preset, {**variant, **cfg.overrides})
        fields["validate_every"] = fields.get("steps", TrainConfig.model_fields["steps"].default)
        config = TrainConfig.from_dict(fields, source=f"sweep run '{name}'")
        changes = {**({"preset": preset} if preset and preset != cfg.preset else {}), **variant}
        runs.append(Run(name, changes, config))
    return runs


def _measure(run: Run, cfg: SweepConfig, seconds: float, summary: dict) -> dict:
    import numpy as np
    from PIL import Image

    from ..faces.dataset import read_dataset
    from ..metrics.report import evaluate
    from ..trainers.outputs.best import selection_score
    from ..trainers.outputs.run_dir import read_log

    c = run.config
    run_dir = Path(c.output_dir)
    last = max(int(p.name.split("-")[1]) for p in (run_dir / "samples").glob("step-*-*.png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((run_dir / "samples").glob(f"step-{last:06d}-*.png"))]

    def photos(holdout):
        return [np.asarray(Image.open(it.image).convert("RGB")) for it in read_dataset(c.dataset, holdout)
                if it.kind == "face"]

    prompts = [c.fill(p) for p in c.validation_prompts for _ in c.validation_seeds]
    rows = {r.metric: r.value for r in evaluate(images, photos(False), prompts, embedder=cfg.evaluation.embedder,
                                                holdout=photos(True) or None)}
    checks = [r["validation"] for r in read_log(run_dir) if "validation" in r]
    peak = max((r.get("peak_memory_mb", 0) for r in read_log(run_dir) if "peak_memory_mb" in r), default=None)
    return {"run": run.name, "differs": run.changes, "seconds": round(seconds, 1), "peak_memory_mb": peak,
            "final_loss": summary.get("final_loss"), "identity": rows.get("identity cosine (mean)"),
            "identity_holdout": rows.get("identity cosine (held-out)"), "copy_paste": rows.get("copy-paste score"),
            "clip_t": rows.get("CLIP score (text-image)"),
            "diversity": next((v for k, v in rows.items() if k.startswith("diversity")), None),
            "q_global": rows.get("Q_global"), "faceless": rows.get("faceless images"),
            "score": selection_score(checks[-1]) if checks else None, "lora": summary.get("lora"),
            "run_dir": str(run_dir)}


def run_sweep(cfg: SweepConfig, log: Callable[[str], None] = log_.info,
              progress: Callable[[int, int], None] | None = None,
              should_cancel: Callable[[], bool] | None = None) -> dict:
    """Train and measure every run; returns {'runs': [...], 'best': ...} (also written).
    ``log`` gets one line per event, prefixed with the run's name (the CLI prints them);
    ``progress(finished runs, runs)`` after each run; ``should_cancel`` stops the training
    child (``TrainingCancelled``; the sweep resumes on the next call)."""
    from ..trainers.subprocess_run import train_in_subprocess

    runs = plan(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    finished = [0]

    def one(index: int, run: Run) -> dict:
        result = _one(index, run)
        with lock:
            finished[0] += 1
            if progress:
                progress(finished[0], len(runs))
        return result

    def _one(index: int, run: Run) -> dict:
        run_dir = Path(run.config.output_dir)
        done = run_dir / "result.json"
        if done.is_file():
            log(f"[{run.name}] finished before, skipped")
            return json.loads(done.read_text())
        if (run_dir / "config.json").is_file() and not any((run_dir / "checkpoints").glob("step-*")):
            shutil.rmtree(run_dir)  # killed before its first checkpoint: nothing to resume
        total = run.config.steps

        def on_event(event):
            if event.get("event") == "log" and (event["step"] % max(1, total // 10) == 0 or event["step"] == total):
                with lock:
                    log(f"[{run.name}] step {event['step']}/{total} loss {event.get('loss')}")

        env = {"CUDA_VISIBLE_DEVICES": str(cfg.gpus[index % len(cfg.gpus)])} if cfg.gpus else None
        log(f"[{run.name}] training ({', '.join(f'{k}={v}' for k, v in run.changes.items()) or 'base'})")
        start = time.perf_counter()
        outcome = train_in_subprocess(run.config, on_event, should_cancel, env=env)
        result = _measure(run, cfg, time.perf_counter() - start, outcome.summary)
        done.write_text(json.dumps(result, indent=2) + "\n")
        log(f"[{run.name}] done: score {result['score']}")
        return result

    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        # each run in a copy of this context (a node's confinement holds in the workers too)
        results = list(pool.map(lambda item: contextvars.copy_context().run(one, *item), enumerate(runs)))
    return write_tables(cfg, runs, results)


def best_of(results: list[dict]) -> dict | None:
    scored = [r for r in results if r.get("score") is not None]
    return max(scored, key=lambda r: r["score"]) if scored else None  # max keeps the first of equals


def write_tables(cfg: SweepConfig, runs: list[Run], results: list[dict]) -> dict:
    import csv

    from ..core.tables import text_table

    out = Path(cfg.output_dir)
    best = best_of(results)
    rule = "highest score: mean held-out identity (faceless 0) minus max(0, copy-paste); ties keep the earlier run"
    data = {"runs": results, "best": best and best["run"], "rule": rule, "base": cfg.base,
            "axes": cfg.axes, "study": cfg.study}
    (out / "sweep.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "best.json").write_text(json.dumps({"run": best and best["run"], "rule": rule,
                                               "lora": best and best["lora"]}, indent=2) + "\n")

    def cell(value):
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items()) or "base"
        if isinstance(value, float):
            return f"{value:.4f}"
        return "skipped" if value is None else str(value)

    rows = [[cell(r.get(c)) + (" (best)" if c == "run" and best and r["run"] == best["run"] else "")
             for c in COLUMNS] for r in results]
    with open(out / "sweep.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows([[cell(r.get(c)) for c in COLUMNS] for r in results])
    (out / "sweep.md").write_text(text_table(COLUMNS, rows, markdown=True) + f"\n\nBest: {best and best['run']} "
                                  f"({rule}).\n")
    for axis in cfg.axes:
        chart(axis, results, out / f"chart-{axis}.png")
    data["table"] = text_table(COLUMNS, rows)
    return data


def chart(axis: str, results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in results:
        groups.setdefault(str(r["differs"].get(axis)), []).append(r)
    xs = list(groups)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in (("score", "score"), ("identity", "identity"), ("identity_holdout", "identity (held-out)")):
        ys = [sum(r[key] or 0.0 for r in groups[x]) / len(groups[x]) for x in xs]
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(axis)
    ax.set_title(f"sweep over {axis} (mean over the other axes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def load_and_check(path: str, jobs: int | None = None) -> tuple[SweepConfig, list[Run]]:
    """The sweep file and every run's config, checked (fields and files) before anything trains;
    a ConfigError or ValueError names the run and the field."""
    cfg = SweepConfig.from_file(path)
    if jobs:
        cfg = cfg.model_copy(update={"jobs": jobs})
    return cfg, load_checked(cfg)


def load_checked(cfg: SweepConfig) -> list[Run]:
    """Every run's config of ``cfg``, checked (fields and files) before anything trains."""
    runs = plan(cfg)
    for run in runs:
        try:
            run.config.check_paths()
        except ValueError as exc:
            raise ValueError(f"sweep run '{run.name}': {exc}") from None
    return runs
