"""The identity gate (reference 000, Algorithm 2): generate -> embed the face -> compare
with the reference -> below the threshold, adjust the parameters and generate again.

A pure function over a ``generate(params) -> image`` callable and an identity embedder,
so the same loop serves ComfyUI's sampler, a diffusers pipeline, and scripted tests.
Faceless generations are failures with that reason (reference 001's "faceless images").
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np

from ..faces.identity import IdentityEmbedder, Reference

log = logging.getLogger(__name__)


@dataclass
class GateSettings:
    threshold: float | None = None  # None: the embedder's calibrated threshold
    max_attempts: int = 4
    new_seed: bool = True  # every attempt uses seed + attempt index
    cfg_schedule: list[float] = field(default_factory=list)  # CFG per attempt (last one repeats)
    steps_schedule: list[int] = field(default_factory=list)  # steps per attempt (last one repeats)
    lora_strength_step: float = 0.0  # added to the LoRA strength at each new attempt
    lora_strength_max: float = 1.5
    reference_mode: Literal["mean_reference", "max", "mean"] = "mean_reference"

    def validate(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: must be within [0, 1], got {self.threshold}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: at least 1, got {self.max_attempts}")
        if any(c <= 0 for c in self.cfg_schedule):
            raise ValueError(f"cfg_schedule: values must be positive, got {self.cfg_schedule}")
        if any(int(s) < 1 for s in self.steps_schedule):
            raise ValueError(f"steps_schedule: values must be >= 1, got {self.steps_schedule}")


@dataclass
class Attempt:
    index: int
    params: dict
    score: float | None
    passed: bool
    reason: str | None  # 'faceless', 'below threshold'; group gate: 'missing <subject>', 'identity leakage'
    subjects: dict | None = None  # group gate: per-subject scores, missing subjects, leaking faces

    def to_json(self) -> dict:
        out = asdict(self)
        if out["subjects"] is None:
            del out["subjects"]
        return out


@dataclass
class GateResult:
    best_image: np.ndarray
    best_index: int
    attempts: list[Attempt]
    images: list[np.ndarray]
    passed: bool
    threshold: float
    embedder: str

    def to_json(self) -> dict:
        return {"passed": self.passed, "best_attempt": self.best_index, "threshold": self.threshold,
                "embedder": self.embedder, "attempts": [a.to_json() for a in self.attempts]}


def attempt_params(base: dict, settings: GateSettings, k: int) -> dict:
    """The parameters of attempt ``k`` (0-based): the adjustment policy, all recorded."""
    p = dict(base)
    if settings.new_seed and "seed" in p:
        p["seed"] = int(base["seed"]) + k
    if settings.cfg_schedule:
        p["cfg"] = float(settings.cfg_schedule[min(k, len(settings.cfg_schedule) - 1)])
    if settings.steps_schedule:
        p["steps"] = int(settings.steps_schedule[min(k, len(settings.steps_schedule) - 1)])
    if settings.lora_strength_step and "lora_strength" in p:
        p["lora_strength"] = min(float(base["lora_strength"]) + k * settings.lora_strength_step,
                                 settings.lora_strength_max)
    return p


Scorer = Callable[[np.ndarray], "tuple[float | None, str | None, dict | None]"]


def _gate_loop(generate: Callable[[dict], np.ndarray], scorer: Scorer, base_params: dict,
               settings: GateSettings, threshold: float, embedder_name: str,
               on_attempt: Callable[[Attempt, np.ndarray], None] | None,
               should_cancel: Callable[[], bool] | None) -> GateResult:
    """Generate with each attempt's parameters until ``scorer(image)`` -> (score, reason of a
    failure or None, detail) passes; the best attempt is the highest score."""
    attempts: list[Attempt] = []
    images: list[np.ndarray] = []
    for k in range(settings.max_attempts):
        if should_cancel and should_cancel():
            break
        params = attempt_params(base_params, settings, k)
        image = generate(params)
        score, reason, detail = scorer(image)
        attempt = Attempt(k + 1, params, None if score is None else round(score, 6), reason is None, reason, detail)
        attempts.append(attempt)
        images.append(image)
        log.info("gate attempt %d: %s", k + 1, f"score {score:.4f}" if score is not None else reason)
        if on_attempt:
            on_attempt(attempt, image)
        if attempt.passed:
            break
    if not attempts:
        raise RuntimeError("the gate was cancelled before its first attempt")
    scored = [a for a in attempts if a.score is not None]
    best = max(scored, key=lambda a: (a.passed, a.score)) if scored else attempts[0]
    return GateResult(images[best.index - 1], best.index, attempts, images, best.passed,
                      threshold, embedder_name)


def gated_generate(generate: Callable[[dict], np.ndarray], embedder: IdentityEmbedder,
                   references: Sequence[np.ndarray], base_params: dict,
                   settings: GateSettings | None = None,
                   on_attempt: Callable[[Attempt, np.ndarray], None] | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> GateResult:
    settings = settings or GateSettings()
    settings.validate()
    threshold = embedder.threshold if settings.threshold is None else settings.threshold
    if len(references) == 0:
        raise ValueError("reference: the reference batch is empty")
    reference = Reference(embedder.embed(references))  # once; a faceless reference is refused

    def scorer(image):
        score = reference.score(embedder, image, settings.reference_mode)
        passed = score is not None and score >= threshold
        return score, None if passed else ("faceless" if score is None else "below threshold"), None

    return _gate_loop(generate, scorer, base_params, settings, threshold, embedder.name, on_attempt, should_cancel)


def gated_generate_group(generate: Callable[[dict], np.ndarray], embedder: IdentityEmbedder,
                         subjects: Sequence[Sequence[np.ndarray]], base_params: dict,
                         settings: GateSettings | None = None, names: Sequence[str] | None = None,
                         allow_leakage: bool = False,
                         on_attempt: Callable[[Attempt, np.ndarray], None] | None = None,
                         should_cancel: Callable[[], bool] | None = None) -> GateResult:
    """The gate for a picture of several subjects (a group prompt with one LoRA each).

    Every face is detected and embedded on its own and matched to the subjects one to one
    (``faces.subjects.assign``). An attempt passes when every subject has a face at or above
    the threshold and, unless ``allow_leakage``, no face also resembles another subject at or
    above it. Its score is the weakest subject's; each attempt's ``subjects`` holds the
    per-subject scores, the missing subjects and the leaking faces.
    """
    from ..faces.subjects import score_group

    settings = settings or GateSettings()
    settings.validate()
    threshold = embedder.threshold if settings.threshold is None else settings.threshold
    if len(subjects) < 2:
        raise ValueError(f"subjects: a group gate needs two or more subjects' references, got {len(subjects)}")
    names = list(names) if names else [f"subject_{i + 1}" for i in range(len(subjects))]
    if len(names) != len(subjects):
        raise ValueError(f"names: {len(names)} names for {len(subjects)} subjects")
    means = []
    for name, refs in zip(names, subjects):
        if len(refs) == 0:
            raise ValueError(f"reference of {name}: the reference batch is empty")
        try:
            means.append(Reference(embedder.embed(refs)).mean)
        except ValueError as exc:
            raise type(exc)(f"{name}: {exc}") from None
    matrix = np.stack(means)

    def scorer(image):
        group = score_group(embedder, image, matrix, threshold)
        detail = group.to_json(names)
        if group.faces == 0:
            return None, "faceless", detail
        if group.assignment.missing:
            return group.weakest, "missing " + ", ".join(detail["missing"]), detail
        if group.assignment.leaking and not allow_leakage:
            return group.weakest, "identity leakage", detail
        return group.weakest, None, detail

    return _gate_loop(generate, scorer, base_params, settings, threshold, embedder.name, on_attempt, should_cancel)
