"""persona sweep: a grid on the tiny model end to end (table, charts, best pick), a killed
sweep resumed, an invalid axis refused before anything trains, and the regimes study."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from comfyui_persona.app.cli import main
from comfyui_persona.core.config import ConfigError
from comfyui_persona.studies.config import SweepConfig
from comfyui_persona.studies.sweep import plan


def _sweep(tmp_path, tiny_model, dataset, **fields) -> dict:
    data = {"base": {"base_model": str(tiny_model), "dataset": str(dataset), "resolution": 64, "steps": 2,
                     "rank": 4, "alpha": 4, "checkpoint_every": 1, "learning_rate": 5e-3},
            "evaluation": {"prompts": ["a photo of {token} {class}"], "seeds": [0], "steps": 2},
            "output_dir": str(tmp_path / "sweep"), **fields}
    return data


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.quick
def test_a_grid_plans_every_combination_and_an_invalid_axis_is_refused_before_anything_runs(
        tiny_model, face_dataset, tmp_path, capsys):
    cfg = SweepConfig.from_dict(_sweep(tmp_path, tiny_model, face_dataset,
                                       axes={"learning_rate": [1e-3, 5e-3], "rank": [2, 4]}))
    runs = plan(cfg)
    assert [r.name for r in runs] == ["learning_rate=0.001_rank=2", "learning_rate=0.001_rank=4",
                                      "learning_rate=0.005_rank=2", "learning_rate=0.005_rank=4"]
    assert runs[3].config.rank == 4 and runs[3].config.learning_rate == 5e-3
    assert runs[0].config.validate_every == 2 and runs[0].config.validation_prompts == ["a photo of {token} {class}"]
    for axes, message in (({"learnign_rate": [1e-3]}, "learnign_rate"), ({"rank": [0]}, "rank")):
        path = _write(tmp_path / "bad.yaml", _sweep(tmp_path, tiny_model, face_dataset, axes=axes))
        assert main(["sweep", str(path)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(ConfigError, match="axes/variants"):
        SweepConfig.from_dict(_sweep(tmp_path, tiny_model, face_dataset))
    bad_data = _sweep(tmp_path, tiny_model, face_dataset, axes={"rank": [2]})
    bad_data["base"]["dataset"] = str(tmp_path / "nowhere")
    assert main(["sweep", str(_write(tmp_path / "bad2.yaml", bad_data))]) == 2
    assert "dataset" in capsys.readouterr().err


def test_a_two_by_two_sweep_runs_end_to_end_and_picks_the_best(tiny_model, face_dataset, tmp_path, capsys):
    path = _write(tmp_path / "sweep.yaml", _sweep(tmp_path, tiny_model, face_dataset,
                                                  axes={"learning_rate": [1e-3, 5e-3], "rank": [2, 4]}))
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    sweep = tmp_path / "sweep"
    rows = list(csv.DictReader(open(sweep / "sweep.csv")))
    assert len(rows) == 4 and {r["run"] for r in rows} == {r.name for r in plan(SweepConfig.from_file(path))}
    for row in rows:
        assert float(row["seconds"]) > 0 and float(row["final_loss"]) > 0
        assert row["score"] == "0.0000"  # the tiny model draws no face: identity counts 0
        assert row["clip_t"] == "skipped" or float(row["clip_t"]) >= 0
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["best"] == rows[0]["run"]  # equal scores: the earlier run
    assert json.loads((sweep / "best.json").read_text())["lora"].endswith("lora.safetensors")
    for axis in ("learning_rate", "rank"):
        assert (sweep / f"chart-{axis}.png").stat().st_size > 1000
    assert "(best)" in (sweep / "sweep.md").read_text() and "best:" in out
    assert all((sweep / r["run"] / "result.json").is_file() for r in rows)


def test_a_killed_sweep_resumes_and_skips_finished_runs(tiny_model, face_dataset, tmp_path):
    path = _write(tmp_path / "sweep.yaml", _sweep(tmp_path, tiny_model, face_dataset,
                                                  variants=[{"name": "first"}, {"name": "second", "steps": 30}]))
    code = "import sys; from comfyui_persona.app.cli import main; sys.exit(main(['sweep', sys.argv[1]]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("[second] step"):  # the first run finished, the second is training
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    first = tmp_path / "sweep" / "first" / "result.json"
    assert first.is_file() and not (tmp_path / "sweep" / "second" / "result.json").exists()
    stamp = first.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[first] finished before, skipped" in done.stdout
    assert first.stat().st_mtime_ns == stamp
    runs = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"]
    assert [r["run"] for r in runs] == ["first", "second"]
    log = [json.loads(l)["step"] for l in (tmp_path / "sweep" / "second" / "log.jsonl").read_text().splitlines()
           if "loss" in json.loads(l)]
    assert log == list(range(1, 31))  # resumed from its checkpoint: every step logged once


def test_the_regimes_study_trains_underfit_balanced_and_overfit_on_the_same_data(tiny_model, face_dataset, tmp_path):
    data = _sweep(tmp_path, tiny_model, face_dataset, study="regimes",
                  overrides={"steps": 2, "prior_preservation": False, "rank": 4, "alpha": 4})
    cfg = SweepConfig.from_dict(data)
    runs = plan(cfg)
    assert [r.name for r in runs] == ["underfit", "balanced", "overfit"]
    assert [r.config.learning_rate for r in runs] == [1e-5, 1e-4, 5e-4]
    assert all(r.config.steps == 2 and r.config.dataset == str(face_dataset) for r in runs)
    assert main(["sweep", str(_write(tmp_path / "regimes.yaml", data))]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [r["run"] for r in rows] == ["underfit", "balanced", "overfit"]
    assert [r["differs"] for r in rows] == ["preset=underfit", "preset=balanced", "preset=overfit"]


def test_the_token_study_trains_each_identifier_and_the_class_alone(tiny_model, face_dataset, tmp_path):
    data = _sweep(tmp_path, tiny_model, face_dataset, study="tokens", tokens=["sks", "vrelk"])
    runs = plan(SweepConfig.from_dict(data))
    assert [r.name for r in runs] == ["token=sks", "token=vrelk", "class-only"]
    captions = [r.config.fill(r.config.instance_prompt) for r in runs]
    assert captions == ["a photo of sks person", "a photo of vrelk person", "a photo of person"]
    assert runs[2].config.fill(runs[2].config.validation_prompts[0]) == "a photo of person"
    assert all(r.config.caption_source == "instance_prompt" for r in runs)
    with pytest.raises(ConfigError, match="tokens"):
        SweepConfig.from_dict({**data, "tokens": ["two words"]})
    assert main(["sweep", str(_write(tmp_path / "tokens.yaml", data))]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "sweep.csv")))
    assert [r["run"] for r in rows] == ["token=sks", "token=vrelk", "class-only"]
    assert all(float(r["final_loss"]) > 0 for r in rows)


def test_a_sweep_from_the_canvas_text_fields(tiny_model, face_dataset, tmp_path):
    from comfyui_persona.studies.config import sweep_from_text

    base = {"base_model": str(tiny_model), "dataset": str(face_dataset)}
    common = dict(preset=None, overrides="steps: 2", tokens="sks", prompts="a photo of {token} {class}\n\n",
                  seeds="0; 1", steps=2, embedder="dlib", output_dir=str(tmp_path / "s"))
    grid = sweep_from_text(base, "sweep", "rank: [2, 4]", **common)
    assert grid.axes == {"rank": [2, 4]} and grid.evaluation.seeds == [0, 1] and grid.overrides == {"steps": 2}
    assert grid.evaluation.prompts == ["a photo of {token} {class}"]
    listed = sweep_from_text(base, "sweep", "- {name: small, rank: 2}\n- {rank: 8}", **common)
    assert [r.name for r in plan(listed)] == ["small", "rank=8"]
    assert plan(sweep_from_text(base, "regimes", "ignored: [1]", **common))[0].name == "underfit"
    for runs, message in (("rank: [2", "runs: not valid YAML"), ("just text", "runs: a YAML mapping")):
        with pytest.raises(ValueError, match=message):
            sweep_from_text(base, "sweep", runs, **common)
    with pytest.raises(ValueError, match="seeds"):
        sweep_from_text(base, "sweep", "rank: [2]", **{**common, "seeds": "0, x"})
