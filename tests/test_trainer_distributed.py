"""Data-parallel training through accelerate: 2 CPU processes (torchrun launcher, gloo)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from comfy_server import free_port
from trainer_helpers import tiny_config


@pytest.mark.parametrize("fields", [{}, {"fused_backward": True, "max_grad_norm": 0.0}], ids=["ddp", "fused-backward"])
def test_two_processes_train_data_parallel(tiny_model, face_dataset, tmp_path, fields):
    """Wrapped in DistributedDataParallel, or (fused backward) each tensor's gradient averaged
    over the processes in its own hook."""
    run = tmp_path / "ddp"
    config = tmp_path / "ddp.json"
    config.write_text(json.dumps(tiny_config(tiny_model, face_dataset, run, steps=4, checkpoint_every=2,
                                             **fields).to_json()))
    accelerate = Path(sys.executable).with_name("accelerate")
    out = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(free_port()),
                          "-m", "comfyui_persona.trainers", str(config), "--json-events"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    events = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3, 4]  # one report per step: the main process
    assert all(e["processes"] == 2 for e in logs)
    assert [e["event"] for e in events].count("done") == 1
    assert load_file(str(run / "lora.safetensors"))
    assert (run / "checkpoints" / "step-000004").is_dir()
