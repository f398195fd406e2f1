"""Metrics of a training run's validation samples at each validation step, and a plot of
each metric against step (how identity, fidelity and diversity evolve while training)."""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

_SAMPLE = re.compile(r"^step-(\d+)-(\d+)\.png$")


def evaluate_run(run_dir: str | Path, embedder: str = "dlib") -> tuple[dict[int, list], Path]:
    from ..faces.dataset import read_dataset
    from .report import evaluate

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--run: '{run_dir}' has no config.json (not a training run)")
    cfg = json.loads(config_path.read_text())
    samples: dict[int, list[Path]] = defaultdict(list)
    for p in sorted((run_dir / "samples").glob("step-*-*.png")):
        m = _SAMPLE.match(p.name)
        if m:
            samples[int(m.group(1))].append(p)
    if not samples:
        raise FileNotFoundError(f"--run: '{run_dir}/samples' holds no validation images "
                                f"(train with validate_every > 0)")
    def photos(holdout: bool):
        return [np.asarray(Image.open(it.image).convert("RGB")) for it in read_dataset(cfg["dataset"], holdout)
                if it.kind == "face"]

    references, holdout = photos(False), photos(True)
    fill = lambda t: t.replace("{token}", cfg["token"]).replace("{class}", cfg["class_noun"])
    prompts = [fill(p) for p in cfg["validation_prompts"] for _ in cfg["validation_seeds"]]
    results = {}
    for step in sorted(samples):
        images = [np.asarray(Image.open(p).convert("RGB")) for p in samples[step]]
        results[step] = evaluate(images, references, prompts if len(prompts) == len(images) else None,
                                 embedder=embedder, holdout=holdout or None)
    out = run_dir / "metrics"
    out.mkdir(exist_ok=True)
    (out / "steps.json").write_text(json.dumps(
        {str(s): [r.__dict__ for r in rows] for s, rows in results.items()}, indent=2) + "\n")
    return results, plot_over_steps(results, out / "metrics_vs_step.png")


def plot_over_steps(results: dict[int, list], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(results)
    names = []
    for rows in results.values():
        names += [r.metric for r in rows if r.metric not in names]
    fig, axes = plt.subplots((len(names) + 2) // 3, 3, figsize=(11, 2.4 * ((len(names) + 2) // 3)), dpi=90,
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = [next((r.value for r in results[s] if r.metric == name), None) for s in steps]
        if all(v is None for v in values):
            ax.text(0.5, 0.5, "skipped", ha="center", va="center", transform=ax.transAxes, color="#a60")
        else:
            ax.plot(steps, [np.nan if v is None else v for v in values], marker="o")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("training step", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
