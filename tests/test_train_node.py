"""Persona Build Dataset -> Persona Train inside the real ComfyUI server."""
from __future__ import annotations

import json
import time

import pytest

from comfyui_persona.faces.samples import write_subject_photos
from comfyui_persona.trainers.config import TrainConfig

pytestmark = pytest.mark.server

_DATASET_WIDGETS = {"subject": "face", "resolution": 64, "face_margin": 0.6, "align_mode": "eyes",
                    "border": "reflect", "multiple_faces": "largest", "min_confidence": 0.95,
                    "min_face_px": 64, "min_sharpness": 15.0, "max_yaw_deg": 60.0,
                    "white_balance": False, "clahe": False, "contrast": False, "denoise": False,
                    "token": "sks", "class_noun": "person", "caption_template": "a photo of {token} {class}",
                    "use_existing_captions": True, "auto_caption": "off"}


def _train_widgets(**over):
    base = {name: TrainConfig.model_fields[name].default for name in (
        "method", "lr_scheduler", "warmup_steps", "optimizer", "mixed_precision", "gradient_checkpointing",
        "train_text_encoder", "prior_preservation", "num_class_images", "prior_loss_weight", "snr_gamma",
        "seed", "batch_size", "gradient_accumulation")}
    base.update(resolution=64, steps=4, learning_rate=5e-3, rank=4, alpha=4.0, checkpoint_every=2)
    base.update(over)
    return base


def _graph(lora_name: str, **train):
    return {
        "1": {"class_type": "PersonaBuildDataset", "inputs": {"photos_folder": "persona/subject",
                                                              "dataset_name": "subject", **_DATASET_WIDGETS}},
        "2": {"class_type": "PersonaTrain", "inputs": {"dataset": ["1", 0], "base_model": "persona-tiny",
                                                       "lora_name": lora_name, "preset": "custom",
                                                       **_train_widgets(**train)}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }


@pytest.fixture(scope="module")
def prepared(comfy, tiny_model):
    write_subject_photos(comfy.input_dir / "persona" / "subject", count=4)
    target = comfy.models / "diffusers" / "persona-tiny"
    if not target.exists():
        target.symlink_to(tiny_model, target_is_directory=True)
    return comfy


def test_train_node_writes_a_lora_that_loraloader_lists(prepared):
    comfy = prepared
    entry = comfy.run_prompt(_graph("persona_node_test"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    lora = comfy.models / "loras" / "persona" / "persona_node_test.safetensors"
    assert lora.is_file()
    listed = comfy.get("/object_info/LoraLoader")["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert "persona/persona_node_test.safetensors" in listed
    text = entry["outputs"]["2"]["text"][0]
    assert text.startswith("trained")
    # the same dataset and config under another name: the finished run is reused
    again = comfy.run_prompt(_graph("persona_node_test_copy"))
    assert again["outputs"]["2"]["text"][0].startswith("reused finished run"), again["outputs"]["2"]
    assert (comfy.models / "loras" / "persona" / "persona_node_test_copy.safetensors").is_file()


def test_cancel_stops_the_child_and_the_server_stays_up(prepared, queue_left_clean):
    comfy = prepared
    messages = comfy.watch("persona-train-progress")
    status, body = comfy.post("/prompt", {"prompt": _graph("persona_cancel_test", steps=5000,
                                                           checkpoint_every=50),
                                          "client_id": "persona-train-progress"})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    runs = comfy.output_dir / "persona" / "runs"
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in runs.glob("*/log.jsonl")
                  if "5000" in (p.parent / "config.json").read_text()):
        time.sleep(0.5)
        assert time.monotonic() < deadline, "training never started"
    run = next(p.parent for p in runs.glob("*/log.jsonl") if '"steps": 5000' in (p.parent / "config.json").read_text())
    deadline = time.monotonic() + 60
    while not [m for m in messages if m["type"] == "progress" and m["data"].get("max") == 5000]:
        time.sleep(0.2)
        assert time.monotonic() < deadline, "the Train node's progress never reached the websocket"
    comfy.post("/interrupt", {})
    deadline = time.monotonic() + 120
    while prompt_id not in comfy.get(f"/history/{prompt_id}"):
        time.sleep(0.5)
        assert time.monotonic() < deadline, "the cancelled prompt never finished"
    entry = comfy.get(f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert not (run / "lora.safetensors").exists()
    # the child saved a checkpoint when it was told to stop, and the server still answers
    assert any((run / "checkpoints").iterdir())
    assert comfy.get("/system_stats")


def test_a_training_child_killed_like_an_oom_leaves_the_server_serving(prepared, queue_left_clean):
    """The kernel's out-of-memory killer ends a process with SIGKILL: the node reports the
    failure with the child's last output, and the server goes on serving. The child killed is
    this server's own (by parent process id), never another server's that looks alike."""
    comfy = prepared
    status, body = comfy.post("/prompt", {"prompt": _graph("persona_killed_test", steps=4000, seed=7),
                                          "client_id": "persona-tests"})
    assert status == 200, body
    deadline = time.monotonic() + 120
    children = []
    while not children:
        assert time.monotonic() < deadline, "the training child never started"
        children = comfy.training_children()
        time.sleep(0.3)
    assert len(children) == 1, children
    time.sleep(3)  # let it load and train a little
    children[0].kill()  # SIGKILL, as the kernel's out-of-memory killer sends
    entry = comfy.wait_for(body["prompt_id"], timeout=120)
    assert entry["status"]["status_str"] == "error"
    message = json.dumps(entry["status"]["messages"])
    assert "training failed (exit code -9)" in message, message
    assert comfy.get("/system_stats")
    again = comfy.run_prompt({"1": {"class_type": "PersonaLoadPhotos", "inputs": {"folder": "persona/subject",
                                                                                  "max_side": 256}},
                              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    assert again["status"]["status_str"] == "success"
