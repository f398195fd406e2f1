"""A gated generation written to a folder: ``attempt-NN.png`` as they come, ``best.png`` and
``gate.json`` (every attempt's parameters, score, pass/fail). Every image is saved with its
provenance (watermark, record, content credentials: ``provenance.save``). Used by
``persona generate`` and the demo."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..provenance.record import ProvenanceConfig, Record
from ..provenance.save import save_image
from .gate import Attempt, GateResult, GateSettings, gated_generate, gated_generate_group


def generate_to_folder(generate: Callable[[dict], np.ndarray], embedder, references: Sequence[np.ndarray],
                       base_params: dict, settings: GateSettings, out: str | Path,
                       on_attempt: Callable[[Attempt, np.ndarray], None] | None = None,
                       record: Record | None = None, provenance: ProvenanceConfig | None = None,
                       subjects: dict[str, Sequence[np.ndarray]] | None = None) -> GateResult:
    """``subjects`` ({name: photos}, two or more): the group gate instead of ``references``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = record or Record(prompt=str(base_params.get("prompt", "")))
    provenance = provenance or ProvenanceConfig.from_env()

    def save(attempt: Attempt, image: np.ndarray) -> None:
        save_image(image, out / f"attempt-{attempt.index:02d}.png",
                   replace(record, seed=attempt.params.get("seed")), provenance)
        if on_attempt:
            on_attempt(attempt, image)

    if subjects:
        result = gated_generate_group(generate, embedder, list(subjects.values()), base_params, settings,
                                      names=list(subjects), on_attempt=save)
    else:
        result = gated_generate(generate, embedder, references, base_params, settings, save)
    best = result.attempts[result.best_index - 1]
    save_image(result.best_image, out / "best.png",
               replace(record, seed=best.params.get("seed"), gate=result.to_json()), provenance)
    (out / "gate.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
