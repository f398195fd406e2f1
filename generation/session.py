"""A gated generation written to a folder: ``attempt-NN.png`` as they come, ``best.png`` and
``gate.json`` (every attempt's parameters, score, pass/fail). Used by ``persona generate``
and the demo."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .gate import Attempt, GateResult, GateSettings, gated_generate


def generate_to_folder(generate: Callable[[dict], np.ndarray], embedder, references: Sequence[np.ndarray],
                       base_params: dict, settings: GateSettings, out: str | Path,
                       on_attempt: Callable[[Attempt, np.ndarray], None] | None = None) -> GateResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def save(attempt: Attempt, image: np.ndarray) -> None:
        Image.fromarray(image).save(out / f"attempt-{attempt.index:02d}.png")
        if on_attempt:
            on_attempt(attempt, image)

    result = gated_generate(generate, embedder, references, base_params, settings, save)
    Image.fromarray(result.best_image).save(out / "best.png")
    (out / "gate.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
