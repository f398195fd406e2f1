"""The run directory: config.json, log.jsonl, loss.png, checkpoints/, samples/, the LoRA."""
from __future__ import annotations

import json
from pathlib import Path



def prepare_run_dir(run_dir: Path, cfg, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    config_path = run_dir / "config.json"
    text = json.dumps(cfg.to_json(), indent=2) + "\n"
    if resume:
        if not config_path.is_file():
            raise cfg.field_error("output_dir", f"cannot resume: '{run_dir}' has no config.json")
        return
    if (run_dir / "log.jsonl").is_file() and (run_dir / "checkpoints").is_dir() \
            and any((run_dir / "checkpoints").iterdir()):
        raise cfg.field_error("output_dir", f"'{run_dir}' already holds a run; "
                              f"resume it (persona train --resume {run_dir}) or choose another output_dir")
    config_path.write_text(text, encoding="utf-8")
    (run_dir / "log.jsonl").write_text("", encoding="utf-8")


def append_log(run_dir: Path, record: dict) -> None:
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_log(run_dir: Path, after_step: int) -> None:
    """Drop log lines past ``after_step`` (a resumed run re-does those steps)."""
    records = [r for r in read_log(run_dir) if r.get("step", 0) <= after_step]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def plot_loss(run_dir: Path) -> Path | None:
    """loss.png: training loss (and its moving average) and learning rate against step."""
    records = [r for r in read_log(run_dir) if "loss" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(steps, loss, color="#9db4d8", linewidth=0.8, label="loss")
    if len(loss) >= 5:
        k = max(len(loss) // 20, 2)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="#1f4e99", linewidth=1.6, label=f"mean of {k}")
    if any("loss_prior" in r for r in records):
        ax.plot(steps, [r.get("loss_prior", np.nan) for r in records], color="#d98b3a",
                linewidth=0.8, label="prior term")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in records], color="#888888", linestyle="--", linewidth=1, label="lr")
    ax2.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path
