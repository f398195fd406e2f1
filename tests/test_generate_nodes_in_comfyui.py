"""The gated sampler and the enhancement nodes inside the real ComfyUI server."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(comfy, sd15_model, astronaut):
    target = comfy.models / "diffusers" / "persona-sd15"
    if not target.exists():
        target.symlink_to(sd15_model, target_is_directory=True)
    Image.fromarray(astronaut).save(comfy.input_dir / "persona_reference.png")
    return comfy


def _saved(comfy, entry, node):
    return [np.asarray(Image.open(comfy.output_dir / i.get("subfolder", "") / i["filename"]))
            for i in entry["outputs"][node]["images"]]


def _gate_graph(size: int = 64, output: tuple = ("PreviewImage", 0), **sampler) -> dict:
    """A gated-sampler graph on the SD1.5-shaped model: loader, prompt, latent, reference photo."""
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0],
              "vae": ["1", 2], "reference": ["5", 0], "seed": 0, "steps": 2, "cfg": 5.0,
              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "embedder": "dlib",
              "threshold": 0.0, "max_attempts": 1, "cfg_schedule": "", "steps_schedule": "",
              "reference_mode": "mean_reference", **sampler}
    kind, slot = output
    return {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "persona-sd15"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of sks person"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
        "6": {"class_type": "PersonaIdentityGatedSampler", "inputs": inputs},
        "7": {"class_type": kind, "inputs": {"images": ["6", slot],
                                             **({"filename_prefix": "gate_marked"} if kind == "SaveImage" else {})}},
    }


def test_gated_sampler_resamples_with_new_seeds_when_the_threshold_is_not_met(server):
    graph = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "persona-sd15"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of sks person"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
        "6": {"class_type": "PersonaIdentityGatedSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "vae": ["1", 2], "reference": ["5", 0], "seed": 40, "steps": 2, "cfg": 5.0,
            "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "embedder": "dlib",
            "threshold": 0.0, "max_attempts": 3, "cfg_schedule": "5, 4", "steps_schedule": "",
            "reference_mode": "mean_reference"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "gate_best"}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "gate_all"}},
    }
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    best, attempts = _saved(server, entry, "7"), _saved(server, entry, "8")
    assert len(best) == 1 and best[0].shape == (64, 64, 3)
    assert len(attempts) == 3 and all(a.shape == (64, 64, 3) for a in attempts)
    # a random-weight model draws no face: every attempt fails as faceless, with new seeds
    summary = entry["outputs"]["6"]["text"][0]
    assert summary.startswith("FAILED")
    assert "#1 seed 40" in summary and "#2 seed 41" in summary and "#3 seed 42" in summary


def test_enhancement_nodes_run_in_a_graph(server):
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
        "2": {"class_type": "PersonaSharpen", "inputs": {
            "image": ["1", 0], "reference": ["1", 0], "embedder": "dlib", "tolerance": 0.01,
            "whole_image": False, "radius": 1.5, "amount": 0.8, "threshold": 2.0}},
        "3": {"class_type": "PersonaColorMatch", "inputs": {
            "image": ["2", 0], "reference": ["1", 0], "embedder": "dlib", "tolerance": 0.01,
            "whole_image": False, "strength": 1.0, "white_balance": False}},
        "4": {"class_type": "PersonaPhotoFinish", "inputs": {
            "image": ["3", 0], "reference": ["1", 0], "embedder": "dlib", "tolerance": 0.01,
            "whole_image": False, "denoise_strength": 3.0, "grain": 0.01, "grain_size": 1.0, "seed": 0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "enhanced"}},
    }
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    out = _saved(server, entry, "5")[0]
    assert out.shape == (512, 512, 3)
    texts = [entry["outputs"][n]["text"][0] for n in ("2", "3", "4")]
    assert texts[0].startswith("sharpen") and "#0:" in texts[0]
    assert "film_grain" in texts[2]
    # what the enhancement nodes return carries Persona's watermark (the pack id: the input had none)
    from comfyui_persona.provenance.watermark import detect

    assert detect(out).found


def test_gated_sampler_outputs_carry_the_watermark_with_their_seed(server):
    from comfyui_persona.provenance.payload import Payload
    from comfyui_persona.provenance.watermark import accuracy, detect

    graph = _gate_graph(256, ("SaveImage", 0), seed=321, steps=1)
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = _saved(server, entry, "7")[0]
    text = entry["outputs"]["6"]["text"][0]
    # a random-weight model draws coloured noise, which may not hold the mark (photos do:
    # test_provenance, and the enhancement test above): the node says which, and says it right
    reading = detect(image)
    assert ("watermark held" in text) == reading.found and ("watermark NOT held" in text) != reading.found, text
    if reading.found:
        assert accuracy(image, Payload("", 321)) >= 0.9
    else:
        assert "does not hold the mark" in text


@pytest.fixture(scope="module")
def server_with_every_embedder(tmp_path_factory, sd15_model, astronaut):
    """A second server whose model folders hold a weights file for every embedder. Only dlib's
    pretrained weights exist on this machine; the others are their real architectures with
    random weights, saved where users keep the real files (the gate's threshold is what is
    checked, not the scores). A server of its own, so no other test sees these files."""
    import torch

    from comfy_server import CACHE, ComfyServer
    from test_identity import _tiny_arcface_onnx

    server = ComfyServer.create(tmp_path_factory.mktemp("comfy-embedders"), "comfyui-embedders")
    (server.models / "diffusers" / "persona-sd15").symlink_to(sd15_model, target_is_directory=True)
    Image.fromarray(astronaut).save(server.input_dir / "persona_reference.png")
    cache = CACHE / "random-embedder-weights"
    facenet = cache / "facenet" / "20180402-114759-vggface2.pt"
    clip = cache / "clip" / "open_clip_ViT-B-32_laion2b_s34b_b79k.bin"
    if not facenet.is_file():
        from facenet_pytorch import InceptionResnetV1

        facenet.parent.mkdir(parents=True, exist_ok=True)
        torch.save(InceptionResnetV1(pretrained=None).state_dict(), facenet)
    if not clip.is_file():
        import open_clip

        clip.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.half() for k, v in open_clip.create_model("ViT-B-32").state_dict().items()}, clip)
    for source in (facenet, clip):
        (server.models / source.parent.name).mkdir(exist_ok=True)
        (server.models / source.parent.name / source.name).symlink_to(source)
    _tiny_arcface_onnx(server.models / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx")
    server.start()
    yield server
    server.stop()


def test_gated_sampler_applies_each_embedders_calibrated_threshold(server_with_every_embedder):
    """threshold 0 (the default) gates at the chosen embedder's own calibrated threshold, and
    the node says which it used; an explicit threshold is used as given."""
    from comfyui_persona.faces.identity import calibrated_threshold

    server = server_with_every_embedder
    info = server.get("/object_info/PersonaIdentityGatedSampler")["PersonaIdentityGatedSampler"]
    assert info["input"]["required"]["threshold"][1]["default"] == 0.0
    cases = [(name, 0.0) for name in ("dlib", "facenet", "arcface", "clip")] + [("facenet", 0.77)]
    for embedder, threshold in cases:
        graph = _gate_graph(steps=1, embedder=embedder, threshold=threshold)
        entry = server.run_prompt(graph)
        assert entry["status"]["status_str"] == "success", (embedder, entry["status"])
        summary = entry["outputs"]["6"]["text"][0]
        expected = threshold or calibrated_threshold(embedder)
        how = "given" if threshold else "calibrated"
        assert f"threshold {expected} ({how}, {embedder})" in summary, summary
    assert sorted({calibrated_threshold(n) for n in ("dlib", "facenet", "arcface", "clip")}) == [0.35, 0.4, 0.85, 0.91]


def test_gated_sampler_reports_progress_and_stops_on_cancel(server):
    graph = _gate_graph(output=("PreviewImage", 1), max_attempts=64)
    import time

    messages = server.watch("persona-gate-progress")
    status, body = server.post("/prompt", {"prompt": graph, "client_id": "persona-gate-progress"})
    assert status == 200, body
    deadline = time.monotonic() + 120
    while not [m for m in messages if m["type"] == "progress" and m["data"].get("max") == 64
               and m["data"].get("value", 0) >= 2]:
        time.sleep(0.2)
        assert time.monotonic() < deadline, "the gated sampler's progress never reached the websocket"
    server.post("/interrupt", {})
    entry = server.wait_for(body["prompt_id"])
    # the gate stops between attempts and returns what it has; the sampler itself may be the
    # one interrupted: either way the prompt ends long before 64 attempts
    done = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"].get("max") == 64]
    assert max(done) < 64
    if entry["status"]["status_str"] == "success":
        assert "of " in entry["outputs"]["6"]["text"][0]
    else:
        assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert server.get("/system_stats")


def test_face_refine_node_runs_in_a_graph(server):
    graph = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": "persona-sd15"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of sks person"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "persona_reference.png"}},
        "6": {"class_type": "PersonaFaceRefine", "inputs": {
            "image": ["5", 0], "reference": ["5", 0], "embedder": "dlib", "tolerance": 0.01, "whole_image": False,
            "model": ["1", 0], "vae": ["1", 2], "positive": ["2", 0], "negative": ["2", 0], "seed": 0, "steps": 1,
            "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.35, "crop_size": 64}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    entry = server.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    text = entry["outputs"]["6"]["text"][0]
    # a random-weight model cannot redraw a face: the drift check rejects the step, the image stays
    assert text.startswith("face_refine") and "#0: rejected" in text, text
