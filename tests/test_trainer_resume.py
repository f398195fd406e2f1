"""Kill-and-resume equivalence, broken checkpoints, and configs rejected before any model loads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import comfyui_persona.models.loading as models
from comfyui_persona.core.config import ConfigError
from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.loop import train

from trainer_helpers import tiny_config


def _write_config(path, cfg: TrainConfig):
    path.write_text(json.dumps(cfg.to_json()))
    return path


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "comfyui_persona.trainers", *args],
                          capture_output=True, text=True, timeout=600, **kw)


def test_killed_run_resumes_to_the_same_weights(tiny_model, face_dataset, tmp_path):
    fields = dict(steps=16, checkpoint_every=4, keep_checkpoints=2, batch_size=2, lora_dropout=0.1)
    straight = train(tiny_config(tiny_model, face_dataset, tmp_path / "straight", **fields))

    run = tmp_path / "killed"
    config = _write_config(tmp_path / "killed.json", tiny_config(tiny_model, face_dataset, run, **fields))
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_persona.trainers", str(config), "--json-events"],
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("step", 0) >= 10:  # past the step-8 checkpoint, before the end
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "lora.safetensors").exists()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints[-1] == "step-000008" and len(checkpoints) <= 2

    done = _run(["--resume", str(run), "--json-events"])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == 8 and summary["steps"] == 16
    a, b = load_file(str(straight.lora_path)), load_file(str(run / "lora.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    logged = [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 17))  # the steps after the checkpoint were logged once


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tiny_model, face_dataset, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_model, face_dataset, run, steps=4, checkpoint_every=2))
    newest = sorted((run / "checkpoints").iterdir())[-1]
    weights = newest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = _run(["--resume", str(run)])
    assert out.returncode == 2 and "corrupt" in out.stderr and str(newest) in out.stderr
    (newest / "optimizer.pt").unlink()
    out = _run(["--resume", str(run)])
    assert out.returncode == 2 and "missing optimizer.pt" in out.stderr

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps(
        tiny_config(tiny_model, face_dataset, fresh, steps=4).to_json()))
    out = _run(["--resume", str(fresh)])
    assert out.returncode == 2 and "no checkpoint" in out.stderr


@pytest.fixture
def tripwire(monkeypatch):
    """Fails the test if a model is loaded (bad configs must be refused before that)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was rejected")

    monkeypatch.setattr(models, "load_components", refuse)


@pytest.mark.parametrize("fields, field", [
    ({"learning_rate": -1e-4}, "learning_rate"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"resolution": 100}, "resolution"),
    ({"bogus": 1}, "bogus"),
    ({"warmup_steps": 10, "steps": 5}, "warmup_steps"),
])
def test_bad_values_are_rejected_naming_the_field(tiny_model, face_dataset, tmp_path, tripwire, fields, field):
    base = tiny_config(tiny_model, face_dataset, tmp_path / "run").to_json()
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({**base, **fields})


def test_missing_or_empty_dataset_is_rejected_before_loading(tiny_model, tmp_path, tripwire):
    with pytest.raises(ConfigError, match="dataset"):
        train(tiny_config(tiny_model, tmp_path / "nope", tmp_path / "run"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="dataset.*no accepted image"):
        train(tiny_config(tiny_model, empty, tmp_path / "run"))
    with pytest.raises(ConfigError, match="base_model"):
        train(tiny_config(tmp_path / "no-model", empty, tmp_path / "run"))


def test_cli_names_the_bad_field(tiny_model, face_dataset, tmp_path):
    data = tiny_config(tiny_model, face_dataset, tmp_path / "run").to_json()
    data["optimizer"] = "sgd"
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(data))
    out = _run([str(config)])
    assert out.returncode == 2 and "optimizer" in out.stderr
