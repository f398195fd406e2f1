"""The best checkpoint, chosen by identity while training.

After each validation (``validate_every``) the samples' identity decides, by this rule:

    score = mean identity on the held-out photos  -  max(0, mean copy-paste score)

(``faces.identity.copy_paste``), with the training photos' identity when the dataset holds
none out (then without the copy-paste term). A validation image without a face counts as
identity 0, so a model that stops drawing faces cannot win; of equal scores the earlier step
stays. The best so far is exported to ``best/`` (``lora.safetensors``, ``diffusers_lora/``;
a full DreamBooth records only the step) with ``best.json``: its step, score, the rule and
the validation's numbers. A resumed run continues from the ``best.json`` it finds.
"""
from __future__ import annotations

import json
from pathlib import Path

RULE = ("mean held-out identity (faceless images count 0) minus max(0, mean copy-paste score); training-photo "
        "identity when nothing is held out; ties keep the earlier step")
FOLDER = "best"


def selection_score(info: dict) -> float | None:
    """The rule's score of one validation's ``info`` (None: no identity measured)."""
    key = "identity_holdout" if info.get("identity_holdout") is not None else "identity"
    values = info.get(key)
    if not values:
        return None
    score = sum(v if v is not None else 0.0 for v in values) / len(values)
    if key == "identity_holdout" and info.get("copy_paste_mean") is not None:
        score -= max(0.0, info["copy_paste_mean"])
    return round(score, 6)


class Best:
    """The best validation step of a run so far."""

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / FOLDER
        self.step, self.score = None, None
        record = self.folder / "best.json"
        if record.is_file():
            data = json.loads(record.read_text())
            self.step, self.score = data["step"], data["score"]

    def consider(self, step: int, info: dict) -> bool:
        """Whether ``step`` beats the best so far (then it becomes the best)."""
        score = selection_score(info)
        if score is None or (self.score is not None and score <= self.score):
            return False
        self.step, self.score = step, score
        return True

    def write(self, info: dict, files: list[Path]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.folder / "best.json"
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": self.step, "score": self.score, "rule": RULE,
                                   "files": [str(f) for f in files], "validation": info}, indent=2) + "\n")
        tmp.replace(record)
        return record
