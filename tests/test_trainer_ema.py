"""EMA of the trained weights: the documented update, what validation and export use, and a
resumed run whose EMA is bit-for-bit the uninterrupted one's."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from comfyui_persona.trainers.loop import Callbacks, train
from comfyui_persona.trainers.loop.ema import EMA
from comfyui_persona.trainers.outputs.export import read_lora_metadata

from trainer_helpers import tiny_config


def test_the_average_follows_the_documented_update_every_n_steps():
    w = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": w}, decay=0.9, every=2, on_cpu=True)
    expected = torch.zeros(3)
    for step in range(1, 7):
        with torch.no_grad():
            w.add_(1.0)
        moved = ema.update(step)
        assert moved == (step % 2 == 0)
        if moved:
            expected = 0.9 * expected + 0.1 * w.detach()
        assert torch.allclose(ema.shadow["w"], expected)
    assert ema.shadow["w"].device.type == "cpu" and ema.shadow["w"].dtype == torch.float32
    with ema.applied():
        assert torch.equal(w.detach(), expected)
    assert torch.equal(w.detach(), torch.full((3,), 6.0))  # the raw weights are back
    with pytest.raises(ValueError, match="ema_decay"):
        EMA({"w": w}, decay=1.0)
    with pytest.raises(RuntimeError, match="does not fit"):
        ema.load({"other": torch.zeros(3)})


def _initial(store: dict):
    def on_start(info):
        store.update({f"unet.{n}": p.detach().clone() for n, p in info["denoiser"].named_parameters()
                      if p.requires_grad})
    return on_start


def test_the_run_averages_every_step_and_exports_the_average_instead_or_beside(tiny_model, face_dataset, tmp_path):
    start: dict = {}
    fields = dict(steps=4, checkpoint_every=1, keep_checkpoints=10, ema=True, ema_decay=0.8, learning_rate=2e-2)
    result = train(tiny_config(tiny_model, face_dataset, tmp_path / "instead", **fields),
                   Callbacks(on_start=_initial(start)))
    ckpts = result.run_dir / "checkpoints"
    shadow = {k: v.clone() for k, v in start.items()}
    for step in range(1, 5):
        weights = load_file(str(ckpts / f"step-{step:06d}" / "trainable.safetensors"))
        shadow = {k: 0.8 * shadow[k] + 0.2 * weights[k] for k in shadow}
        saved = load_file(str(ckpts / f"step-{step:06d}" / "ema.safetensors"))
        assert saved.keys() == shadow.keys()
        for k in shadow:
            assert torch.allclose(saved[k], shadow[k], atol=1e-7), (step, k)
    raw = load_file(str(ckpts / "step-000004" / "trainable.safetensors"))
    assert any(not torch.allclose(raw[k], shadow[k]) for k in raw)  # the average lags the weights

    def lora_ups(path):
        return {k: v.float() for k, v in load_file(str(path)).items() if k.endswith("lora_up.weight")}

    exported = lora_ups(result.lora_path)
    assert read_lora_metadata(result.lora_path)["persona.weights"] == "ema"
    assert result.ema_path is None
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.default.weight"
    kohya = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"
    assert torch.allclose(exported[kohya], shadow[key].half().float())

    beside = train(tiny_config(tiny_model, face_dataset, tmp_path / "beside", **fields, ema_export="beside"))
    assert beside.ema_path == beside.run_dir / "lora_ema.safetensors"
    assert (beside.run_dir / "diffusers_lora_ema" / "pytorch_lora_weights.safetensors").is_file()
    assert read_lora_metadata(beside.lora_path)["persona.weights"] == "raw"
    assert read_lora_metadata(beside.ema_path)["persona.weights"] == "ema"
    assert torch.allclose(lora_ups(beside.lora_path)[kohya], raw[key].half().float())
    assert torch.equal(lora_ups(beside.ema_path)[kohya], exported[kohya])


def test_a_stopped_and_resumed_run_has_the_same_average_bit_for_bit(tiny_model, face_dataset, tmp_path):
    fields = dict(steps=6, checkpoint_every=3, ema=True, ema_decay=0.7, ema_every=2, ema_on_cpu=True,
                  lora_dropout=0.1)
    straight = train(tiny_config(tiny_model, face_dataset, tmp_path / "straight", **fields))
    cfg = tiny_config(tiny_model, face_dataset, tmp_path / "stopped", **fields)
    seen = {"step": 0}

    def on_log(record):
        seen["step"] = record["step"]

    stopped = train(cfg, Callbacks(on_log=on_log, should_stop=lambda: seen["step"] >= 2))
    assert stopped.stopped and stopped.steps_done == 2
    assert (stopped.run_dir / "checkpoints" / "step-000002" / "ema.safetensors").is_file()
    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == 2 and resumed.steps_done == 6
    a = load_file(str(straight.run_dir / "checkpoints" / "step-000006" / "ema.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "step-000006" / "ema.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = load_file(str(straight.lora_path)), load_file(str(resumed.lora_path))
    assert all(torch.equal(la[k], lb[k]) for k in la)
    # a checkpoint that lost its EMA cannot resume an EMA run
    (resumed.run_dir / "checkpoints" / "step-000006" / "ema.safetensors").unlink()
    from comfyui_persona.trainers.outputs.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="ema.safetensors"):
        train(cfg.model_copy(update={"steps": 8}), resume=True)
