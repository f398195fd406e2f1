"""Bar charts of metric rows (one run, or several runs side by side) as RGB arrays."""
from __future__ import annotations

import numpy as np


def metrics_chart(runs: dict[str, list], title: str = "Persona metrics") -> np.ndarray:
    """``runs``: label -> list of report rows (objects or dicts with metric/value/status)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def as_dict(row):
        return row if isinstance(row, dict) else row.__dict__

    names = []
    for rows in runs.values():
        for r in map(as_dict, rows):
            if r["metric"] not in names:
                names.append(r["metric"])
    labels = list(runs)
    height = max(3.0, 0.42 * len(names) * max(1, len(labels) * 0.6) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=100)
    bar = 0.8 / max(len(labels), 1)
    y = np.arange(len(names))
    for k, label in enumerate(labels):
        values = {as_dict(r)["metric"]: as_dict(r) for r in runs[label]}
        vals = [values[n]["value"] if n in values and values[n]["value"] is not None else 0.0 for n in names]
        pos = y + (k - (len(labels) - 1) / 2) * bar
        ax.barh(pos, vals, height=bar, label=label)
        for p, n, v in zip(pos, names, vals):
            row = values.get(n)
            text = "skipped" if row is None or row["value"] is None else f"{v:.3f}"
            ax.text(v, p, " " + text, va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if len(labels) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return image
