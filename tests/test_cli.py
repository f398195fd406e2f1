"""The persona command line: listed subcommands, prepare, and the demo."""
from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from comfyui_persona.cli import build_parser, main


def test_only_working_subcommands_are_listed():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == ["demo", "prepare", "train"]


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "comfyui_persona.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "prepare" in out and "demo" in out


def test_prepare_prints_a_summary_table(tmp_path, astronaut, coffee, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut).save(photos / "a.png")
    Image.fromarray(coffee).save(photos / "c.jpg")
    config = tmp_path / "prepare.yaml"
    config.write_text("resolution: 128\ntoken: ohwx\n")
    assert main(["prepare", str(photos), str(tmp_path / "ds"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "a.png" in out and "accepted" in out and "no face" in out
    assert "1 accepted, 1 rejected" in out
    assert (tmp_path / "ds" / "a.txt").read_text().strip() == "a photo of ohwx person"


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
    assert "RANDOM weights" in out
    assert (tmp_path / "demo" / "report.md").is_file()
    for stage, info in summary.items():
        if info["status"] == "missing":
            assert stage in out
