"""The persona command line: listed subcommands, prepare, and the demo."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from comfyui_persona.app.cli import build_parser, main


@pytest.mark.quick
def test_only_working_subcommands_are_listed():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["calibrate", "demo", "eval", "fetch-weights", "generate", "merge-loras", "prepare",
                                   "queue", "sweep", "train", "verify"]


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "comfyui_persona.app.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "demo" in out


@pytest.mark.quick
def test_prepare_prints_a_summary_table(tmp_path, astronaut, coffee, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "a.png")
    Image.fromarray(coffee).save(photos / "c.jpg")
    config = tmp_path / "prepare.yaml"
    config.write_text("resolution: 128\ntoken: ohwx\n")
    assert main(["prepare", str(photos), str(tmp_path / "ds"), "--config", str(config)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # the progress line is drawn once per new count: the start, then one per photo
    updates = [line for line in captured.err.replace("\r", "\n").splitlines() if line.startswith("prepare:")]
    assert len(updates) == 3 and updates[0] == "prepare: 0/2 photos" and updates[-1].startswith("prepare: 2/2"), updates
    assert "a.png" in out and "accepted" in out and "no face" in out
    assert "1 accepted, 1 rejected" in out
    assert (tmp_path / "ds" / "a.txt").read_text().strip() == "a photo of ohwx person"


@pytest.mark.quick
def test_prepare_with_a_bad_config_names_the_field(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"resolution": 513}))
    assert main(["prepare", str(tmp_path), str(tmp_path / "ds"), "--config", str(config)]) == 2
    assert "resolution" in capsys.readouterr().err


def test_demo_runs_the_available_stages_and_names_the_missing_ones(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--quick"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["prepare"]["status"] == "ok" and summary["prepare"]["accepted"] >= 3
    assert summary["train"]["status"] == "ok" and (tmp_path / "demo" / "train" / "lora.safetensors").is_file()
    assert all(info["status"] == "ok" for info in summary.values()), summary
    assert (tmp_path / "demo" / "metrics" / "report.json").is_file()
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "## Metrics" in report and "tiny model" in report and "not image quality" in report
    assert "models/weights/tiny_faces" in out
    # the default path draws a face: the gate scores it, enhancement and identity metrics run on it
    generate = summary["generate"]
    assert generate["faceless"] < generate["attempts"], generate
    assert not any("no face found" in step for step in summary["enhance"]["steps"]), summary["enhance"]
    rows = {r["metric"]: r for r in json.loads((tmp_path / "demo" / "metrics" / "report.json").read_text())["metrics"]}
    assert rows["identity cosine (mean)"]["value"] is not None
    assert rows["identity cosine to another person (control)"]["value"] is not None
    assert (tmp_path / "demo" / "report.md").is_file()
    # every image the demo made carries Persona's watermark and record
    assert main(["verify", *map(str, sorted((tmp_path / "demo" / "generate").glob("*.png")))]) == 0
    assert "watermark: True" in out
    for stage, info in summary.items():
        if info["status"] == "missing":
            assert stage in out


def test_generate_applies_several_loras_and_gates_several_subjects(tiny_model, face_dataset, tmp_path, astronaut,
                                                                  grace_hopper, capsys):
    import numpy as np

    from comfyui_persona.generation.diffusers_backend import DiffusersGenerator
    from comfyui_persona.models.tiny_faces import build_tiny_faces_model
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    # LoRAs trained on the random tiny model fit the tiny face model: the same architecture
    first = train(tiny_config(tiny_model, face_dataset, tmp_path / "a", steps=2)).lora_path
    second = train(tiny_config(tiny_model, face_dataset, tmp_path / "b", steps=2, seed=1, learning_rate=0.05)).lora_path
    model = build_tiny_faces_model(tmp_path / "faces-model")
    params = {"prompt": "a photo of sks person", "seed": 3, "steps": 4, "cfg": 3.0, "width": 64, "height": 64}
    both = DiffusersGenerator(model, [first, second])
    alone = DiffusersGenerator(model, first)(params)
    assert np.array_equal(both({**params, "lora_strengths": [1.0, 0.0]}), alone)
    assert np.abs(both({**params, "lora_strengths": [1.0, 1.0]}).astype(int) - alone).mean() > 1
    with pytest.raises(ValueError, match="lora_strengths"):
        both({**params, "lora_strengths": [1.0]})
    folders = {}
    for name, photo in (("eileen", astronaut), ("grace", grace_hopper)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        Image.fromarray(photo).save(folders[name] / "a.png")
    args = ["generate", "--base-model", str(model), "--lora", str(first), "--lora", str(second), "--lora-strength",
            "1.0", "--lora-strength", "0.5", "--subject", f"eileen={folders['eileen']}", "--subject",
            f"grace={folders['grace']}", "--prompt", "a photo of sks person", "--max-attempts", "2", "--steps", "20",
            "--cfg", "3", "--size", "64", "--out", str(tmp_path / "group")]
    assert main(args) == 3  # the tiny model draws one person at a time: a subject is always missing
    report = json.loads((tmp_path / "group" / "generate.json").read_text())
    assert report["subjects"] == ["eileen", "grace"] and len(report["loras"]) == 2
    for attempt in report["gate"]["attempts"]:
        assert attempt["params"]["lora_strengths"] == [1.0, 0.5]
        assert attempt["reason"] == "faceless" or attempt["reason"].startswith("missing")
        assert set(attempt["subjects"]["subjects"]) == {"eileen", "grace"}
    capsys.readouterr()
    assert main(args[:7] + ["--lora-strength", "1", "--lora-strength", "1", "--lora-strength", "1"] + args[11:]) == 2
    assert "one per --lora" in capsys.readouterr().err
    assert main(args + ["--enhance", "sharpen"]) == 2
    assert "not with --subject" in capsys.readouterr().err


def test_generate_writes_attempts_and_scores(tiny_model, face_dataset, tmp_path, astronaut, capsys):
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    lora = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=2)).lora_path
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(astronaut).save(refs / "a.png")
    code = main(["generate", "--base-model", str(tiny_model), "--lora", str(lora), "--reference", str(refs),
                 "--prompt", "a photo of sks person", "--max-attempts", "2", "--steps", "2",
                 "--size", "64", "--lora-strength-step", "0.25", "--out", str(tmp_path / "out"),
                 "--enhance", "sharpen"])
    assert code == 3  # a random-weight model draws no face: the gate cannot pass
    report = json.loads((tmp_path / "out" / "generate.json").read_text())
    attempts = report["gate"]["attempts"]
    assert [a["reason"] for a in attempts] == ["faceless", "faceless"]
    assert [a["params"]["seed"] for a in attempts] == [0, 1]
    assert [a["params"]["lora_strength"] for a in attempts] == [1.0, 1.25]
    assert report["base_model_random_weights"] is True
    for name in ("best.png", "attempt-01.png", "attempt-02.png", "enhanced.png"):
        assert Image.open(tmp_path / "out" / name).size == (64, 64)
    assert report["enhance"][0]["applied"] is False
    assert report["reference_set"] == "folder" and report["references"] == 1
    # a Persona dataset as the reference: its training photos (it holds none out), or refused
    code = main(["generate", "--base-model", str(tiny_model), "--lora", str(lora), "--reference", str(face_dataset),
                 "--prompt", "a photo of sks person", "--max-attempts", "1", "--steps", "1", "--size", "64",
                 "--out", str(tmp_path / "out2")])
    report = json.loads((tmp_path / "out2" / "generate.json").read_text())
    assert code == 3 and report["reference_set"] == "train" and report["references"] == 4
    capsys.readouterr()
    assert main(["generate", "--base-model", str(tiny_model), "--lora", str(lora), "--reference", str(face_dataset),
                 "--reference-set", "holdout", "--prompt", "x", "--out", str(tmp_path / "out3")]) == 2
    assert "holds no photo out" in capsys.readouterr().err


def test_generate_rejects_a_bad_threshold_and_a_faceless_reference(tiny_model, tmp_path, coffee, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(coffee).save(refs / "c.png")
    args = ["generate", "--base-model", str(tiny_model), "--reference", str(refs), "--prompt", "x",
            "--size", "64", "--steps", "1", "--out", str(tmp_path / "o")]
    assert main(args + ["--threshold", "1.5"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(args) == 2
    assert "reference" in capsys.readouterr().err


def test_eval_prints_the_table_and_writes_reports(tmp_path, astronaut, grace_hopper, coffee, capsys, monkeypatch):
    import csv

    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "no-weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-cache"))
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    Image.fromarray(astronaut[:, ::-1].copy()).save(gen / "1.png")
    Image.fromarray(grace_hopper).save(gen / "2.png")
    Image.fromarray(coffee).save(gen / "3.png")
    Image.fromarray(astronaut).save(ref / "a.png")
    assert main(["eval", "--generated", str(gen), "--reference", str(ref), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    report = {m["metric"]: m for m in json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]}
    assert report["faceless images"]["value"] == 1.0
    assert 0.89 < report["identity cosine (mean)"]["value"] < 0.96  # one match, one other person
    assert report["identity pass rate"]["value"] == 0.5
    # weights that are not on this machine: reported as skipped with the reason, never as 0
    assert report["LPIPS to references (alex)"]["value"] is None
    assert report["LPIPS to references (alex)"]["status"].startswith("skipped: ")
    assert "alexnet-owt-7be5be79.pth" in report["LPIPS to references (alex)"]["status"]
    assert report["CLIP score"]["status"].startswith("skipped: ")
    assert report["FID"]["status"].startswith("skipped: ") and report["KID"]["value"] is None
    assert "without lpips, fid" in report["Q_global"]["detail"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert len(rows) == len(report) and "skipped" in out


def test_fetch_weights_downloads_into_the_cache_and_the_lookup_finds_them(tmp_path, monkeypatch, capsys):
    import http.server
    import threading

    from comfyui_persona.core.weights import FACENET_VGGFACE2, find_weights

    served = tmp_path / "mirror"
    served.mkdir()
    (served / FACENET_VGGFACE2.filename).write_bytes(b"weights" * 100)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("PERSONA_WEIGHTS", str(tmp_path / "cache"))
    try:
        mirror = f"http://127.0.0.1:{httpd.server_address[1]}"
        code = main(["fetch-weights", "--mirror", mirror, "--only", FACENET_VGGFACE2.filename,
                     "alexnet-owt-7be5be79.pth"])
    finally:
        httpd.shutdown()
    out = capsys.readouterr().out
    assert code == 1  # one of the two is not on the mirror
    assert "ok" in out and "FAILED" in out
    path = find_weights(FACENET_VGGFACE2)
    assert path.read_bytes() == b"weights" * 100 and path.is_relative_to(tmp_path / "cache")


def test_eval_of_a_training_run_plots_metrics_against_step(tiny_model, face_dataset, tmp_path, capsys):
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    run = tmp_path / "run"
    train(tiny_config(tiny_model, face_dataset, run, steps=2, validate_every=1, validation_steps=2,
                      validation_seeds=[0, 1], validation_identity="off"))
    assert main(["eval", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step 1" in out and "step 2" in out and "faceless images" in out
    steps = json.loads((run / "metrics" / "steps.json").read_text())
    assert sorted(steps) == ["1", "2"]
    faceless = {r["metric"]: r["value"] for r in steps["2"]}["faceless images"]
    assert faceless == 2.0  # random weights draw no faces
    assert Image.open(run / "metrics" / "metrics_vs_step.png").size[0] > 500
    assert "best checkpoint: none picked" in out  # validation_identity off: nothing to pick by


def test_prepare_holds_out_eval_reports_copy_paste_and_the_run_shows_its_pick(tiny_model, tmp_path, astronaut,
                                                                             grace_hopper, capsys):
    from comfyui_persona.faces.samples import write_subject_photos
    from comfyui_persona.trainers.loop import train
    from trainer_helpers import tiny_config

    write_subject_photos(tmp_path / "photos", count=4)
    config = tmp_path / "prepare.json"
    config.write_text(json.dumps({"resolution": 64}))
    assert main(["prepare", str(tmp_path / "photos"), str(tmp_path / "ds"), "--config", str(config),
                 "--holdout", "1"]) == 0
    assert "held out" in capsys.readouterr().out
    # a generated image that is a training photo itself: a copy
    train_photo = next(p for p in sorted((tmp_path / "ds").glob("*.png")))
    held = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    held_image = next(e["image"] for e in held["photos"] if e.get("holdout"))
    gen, ref, hold = tmp_path / "gen", tmp_path / "ref", tmp_path / "hold"
    for d in (gen, ref, hold):
        d.mkdir()
    Image.open(train_photo).save(gen / "copy.png")
    Image.fromarray(grace_hopper).save(gen / "other.png")
    for p in (tmp_path / "ds").glob("*.png"):
        if p.name != held_image:
            Image.open(p).save(ref / p.name)
    Image.open(tmp_path / "ds" / held_image).save(hold / "h.png")
    assert main(["eval", "--generated", str(gen), "--reference", str(ref), "--holdout", str(hold),
                 "--out", str(tmp_path / "out")]) == 0
    report = {m["metric"]: m for m in json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]}
    assert report["identity cosine (held-out)"]["value"] is not None
    assert report["copy-paste score"]["value"] > 0  # the copy is nearer its training photo
    run = tmp_path / "run"
    train(tiny_config(tiny_model, tmp_path / "ds", run, steps=2, validate_every=1, validation_steps=2))
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "best checkpoint: step 1" in out and "best/lora.safetensors" in out
