"""A shared ComfyUI server, tried from outside with nothing but HTTP: every value a graph
carries is untrusted. Each probe queues a graph through POST /prompt on a real server and
asserts refusal, with canary files outside ComfyUI's folders whose content, hash and existence
never appear in any output, history entry or error, and nothing written outside.

The escapes: a consent file whose ``document`` points outside; a sweep whose runs or
overrides set paths; a literal value in place of a PERSONA_DATASET or PERSONA_LORA link;
files in an allowed folder that are symlinks to outside (a caption, a photo); and the queue
held by a Memory Plan that ignores Cancel. Also: NaN widgets are field errors, messages name
ComfyUI's folders by label, and caches live in ComfyUI's user folder."""
from __future__ import annotations

import hashlib
import json
import re
import time
import uuid

import pytest

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    """A folder outside ComfyUI: a text file, a LoRA-like .safetensors and a photo, each
    unmistakable; and the folder's name and a path beside it that does not exist."""
    from safetensors.torch import save_file
    import torch

    root = tmp_path_factory.mktemp("canary-outside-comfyui")
    text = f"CANARY-{uuid.uuid4().hex}"
    (root / "secret.txt").write_text(text)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(root / "outside.safetensors"))
    from comfyui_persona.faces.samples import write_subject_photos

    write_subject_photos(root / "photos", count=3)
    return {"root": root, "text": text, "sha": hashlib.sha256(text.encode()).hexdigest(),
            "file": root / "secret.txt", "missing": root / "no-such-file.txt"}


@pytest.fixture(scope="module")
def probe_model(comfy, sd15_model):
    """The SD1.5-shaped model in the server's models/diffusers (a base_model the nodes list)."""
    link = comfy.models / "diffusers" / "persona-probe-sd15"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(sd15_model, target_is_directory=True)
    return link.name


def _inputs(comfy, node: str, **given) -> dict:
    """Every required input of ``node`` at its default (a combo's first choice), as the
    server's /object_info describes it, with ``given`` over them."""
    info = comfy.get(f"/object_info/{node}")[node]["input"]["required"]
    out = {}
    for name, spec in info.items():
        kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
        if isinstance(kind, list):
            out[name] = opts.get("default", kind[0] if kind else "")
        elif "default" in opts:
            out[name] = opts["default"]
    out.update(given)
    return out


def _everything(comfy, entry) -> str:
    """What the server says about a prompt: its history entry, and the server log."""
    return json.dumps(entry) + comfy.log()


def _error_message(entry) -> str:
    """The node's error message in a /history entry (ComfyUI adds its own traceback beside it,
    whose frames name its files: that part is the host's)."""
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return data["exception_message"]
    raise AssertionError(f"no execution error in {entry['status']}")


def _refused(comfy, entry, canary, field: str) -> str:
    assert entry["status"]["status_str"] == "error", entry["status"]
    message = _error_message(entry)
    assert field in message, message
    seen = _everything(comfy, entry)
    assert canary["text"] not in seen and canary["sha"] not in seen
    assert str(comfy.root) not in message  # messages name ComfyUI's folders by label
    return message


def _no_canary_in_outputs(comfy, canary):
    for f in comfy.output_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".txt", ".md", ".csv", ".yaml"):
            body = f.read_text(errors="replace")
            assert canary["text"] not in body and canary["sha"] not in body, f


def _photos(comfy, name: str):
    from comfyui_persona.faces.samples import write_subject_photos

    folder = comfy.input_dir / "persona" / name
    if not folder.exists():
        write_subject_photos(folder, count=3)
    return f"persona/{name}"


def _build(photos: str, name: str, consent_file: str = "") -> dict:
    from test_safety_in_comfyui import _dataset_widgets

    return {"class_type": "PersonaBuildDataset", "inputs": {
        "photos_folder": photos, "dataset_name": name, "consent_file": consent_file, **_dataset_widgets()}}


def _consent(comfy, name: str, document: str):
    (comfy.input_dir / name).write_text(
        f"subject: Ada\nconsented_by: Ada\ndate: 2026-01-01\nuses: [train a personal LoRA]\ndocument: {document}\n")
    return name


def test_consent_document_is_confined_like_the_consent_file(comfy, canary):
    photos = _photos(comfy, "probe_photos")
    link = comfy.input_dir / "persona_doc_link.txt"
    if not link.exists():
        link.symlink_to(canary["file"])
    messages = []
    for k, document in enumerate([str(canary["file"]), str(canary["missing"]), "../../../" * 8 + str(canary["file"]),
                                  "persona_doc_link.txt"]):
        consent = _consent(comfy, f"probe_consent_{k}.yaml", document)
        entry = comfy.run_prompt({"1": _build(photos, f"consent_probe_{k}", consent)})
        messages.append(_refused(comfy, entry, canary, "document"))
        assert not (comfy.output_dir / "persona" / "datasets" / f"consent_probe_{k}").exists()
    # an existing and a missing outside file get the same answer: no oracle of what exists
    quoted = re.compile(r"'[^']*'")
    assert quoted.sub("X", messages[0]) == quoted.sub("X", messages[1])
    assert "is not a file" not in messages[1]
    _no_canary_in_outputs(comfy, canary)


def test_literal_dataset_values_are_revalidated_where_used(comfy, canary, probe_model):
    outside = {"path": str(canary["root"] / "photos"), "token": "sks", "class_noun": "person", "resolution": 64}
    messages = []
    for value in (outside, {**outside, "path": str(canary["root"] / "nowhere")}, {"__value__": outside},
                  {**outside, "path": str(comfy.output_dir / "persona" / "datasets" / ".." / ".." / "..")}):
        entry = comfy.run_prompt({"1": {"class_type": "PersonaTrain", "inputs": _inputs(
            comfy, "PersonaTrain", dataset=value, base_model=probe_model, lora_name="probe", steps=1)}})
        messages.append(_refused(comfy, entry, canary, "dataset"))
    # an existing and a missing folder outside get the same answer
    assert messages[0] == messages[1]
    assert not list((comfy.output_dir / "persona").glob("runs/*/log.jsonl"))
    assert not list(canary["root"].glob("**/manifest.json"))


def test_lora_literal_is_refused_and_its_file_never_read(comfy, canary, probe_model):
    for path in (str(canary["root"] / "outside.safetensors"), "/etc/passwd", str(canary["file"])):
        graph = {"1": {"class_type": "DiffusersLoader", "inputs": {"model_path": probe_model}},
                 "2": {"class_type": "PersonaApplyLora", "inputs": {
                     "model": ["1", 0], "clip": ["1", 1], "strength_model": 1.0, "strength_clip": 1.0,
                     "lora": {"path": path, "token": "sks", "class_noun": "person"}}},
                 "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "x"}},
                 "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                 "5": {"class_type": "KSampler", "inputs": {
                     "model": ["2", 0], "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                     "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1.0}},
                 "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "probe"}}}
        message = _refused(comfy, comfy.run_prompt(graph), canary, "lora")
        assert "not in ComfyUI's LoRA folders" in message, message
    assert "lora_unet_x" not in comfy.log()  # no key of the outside file was read


def test_sweep_sets_only_training_fields(comfy, canary, probe_model):
    dataset = {"path": str(comfy.output_dir / "persona" / "datasets" / "probe"), "token": "sks",
               "class_noun": "person"}
    escapes = [("rank: [2]", f"output_dir: {canary['root']}/run", "overrides", "output_dir"),
               ("rank: [2]", f"cache_dir: {canary['root']}", "overrides", "cache_dir"),
               (f"- name: a\n  dataset: {canary['root']}/photos", "steps: 1", "variants[0]", "dataset"),
               (f"output_dir: ['{canary['root']}']", "steps: 1", "axes", "output_dir"),
               ("- name: b\n  steps: 1", f"base_model: {canary['root']}", "overrides", "base_model"),
               ("- name: c\n  device: cuda", "steps: 1", "variants[0]", "device")]
    for runs, overrides, where, field in escapes:
        entry = comfy.run_prompt({"1": {"class_type": "PersonaSweep", "inputs": _inputs(
            comfy, "PersonaSweep", dataset=dataset, base_model=probe_model, sweep_name="probe_sweep", study="sweep",
            runs=runs, overrides=overrides)}})
        _refused(comfy, entry, canary, f"{where}: '{field}' cannot be set per run")
    assert not list(canary["root"].glob("run*"))
    assert not (comfy.output_dir / "persona" / "sweeps" / "probe_sweep").exists()


def test_symlinked_caption_and_photo_inside_an_allowed_folder_are_not_read(comfy, canary):
    folder = comfy.input_dir / "persona" / "probe_links"
    if not folder.exists():
        _photos(comfy, "probe_links")
        first = sorted(folder.iterdir())[0]
        first.with_suffix(".txt").symlink_to(canary["file"])  # a caption that leads outside
        (folder / "zz_outside.png").symlink_to(sorted((canary["root"] / "photos").iterdir())[0])
    entry = comfy.run_prompt({"1": _build("persona/probe_links", "probe_links")})
    assert entry["status"]["status_str"] == "success", entry["status"]
    seen = _everything(comfy, entry)
    assert canary["text"] not in seen and canary["sha"] not in seen
    report = entry["outputs"]["1"]["text"][0]
    assert "zz_outside" in report and "outside ComfyUI's folders" in report
    manifest = (comfy.output_dir / "persona" / "datasets" / "probe_links" / "manifest.json").read_text()
    assert canary["text"] not in manifest
    _no_canary_in_outputs(comfy, canary)


def test_nan_and_absolute_paths_get_field_errors_that_do_not_map_the_server(comfy, canary):
    entry = comfy.run_prompt({"1": {"class_type": "PersonaMemoryPlan", "inputs": _inputs(
        comfy, "PersonaMemoryPlan", family="sd15", vram_budget_gb=float("nan"))}})
    # a NaN in the server's history makes its jobs list invalid JSON for the frontend: the
    # probe's prompt is removed from the history of this shared test server
    comfy.post("/history", {"delete": [entry["prompt"][1]]})
    message = _error_message(entry)
    assert entry["status"]["status_str"] == "error" and "vram_budget_gb" in message and "finite" in message, message
    assert "ValidationError" not in message and "pydantic" not in message
    entry = comfy.run_prompt({"1": {"class_type": "PersonaLoadPhotos",
                                    "inputs": {"folder": "persona/no_such_folder", "max_side": 512}},
                              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    message = _error_message(entry)
    assert entry["status"]["status_str"] == "error" and "input/persona/no_such_folder" in message, message
    assert str(comfy.root) not in message


def test_a_long_memory_plan_stops_on_cancel_and_keeps_its_cache_in_comfyui(comfy):
    graph = {"1": {"class_type": "PersonaMemoryPlan", "inputs": _inputs(
        comfy, "PersonaMemoryPlan", family="flux", resolution=2048, batch_size=256, rank=1024, vram_budget_gb=8.0)}}
    status, body = comfy.post("/prompt", {"prompt": graph, "client_id": "persona-probe"})
    assert status == 200, body
    time.sleep(3)
    started = time.monotonic()
    comfy.post("/interrupt", {})
    entry = comfy.wait_for(body["prompt_id"], timeout=120)
    assert time.monotonic() - started < 90  # one simulation at most, then the search stops
    assert entry["status"]["status_str"] in ("error", "interrupted") or \
        any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    quick = comfy.run_prompt({"1": {**graph["1"], "inputs": {**graph["1"]["inputs"], "family": "sd15",
                                                             "resolution": 512, "batch_size": 1, "rank": 16}}})
    assert quick["status"]["status_str"] == "success", quick["status"]  # the queue goes on
    user = comfy.root / "user"
    assert (user / "persona" / "cache" / "plans.json").is_file()
