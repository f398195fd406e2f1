"""Metrics Panel and Compare inside the real ComfyUI server."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.server


def test_metrics_panel_and_compare(comfy, astronaut, grace_hopper):
    Image.fromarray(astronaut).save(comfy.input_dir / "persona_m_ref.png")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(comfy.input_dir / "persona_m_a.png")
    Image.fromarray(np.asarray(Image.fromarray(grace_hopper).resize((512, 512)))).save(comfy.input_dir / "persona_m_b.png")
    panel = lambda image, name: {"class_type": "PersonaMetricsPanel", "inputs": {
        "generated": [image, 0], "reference": ["r", 0], "prompts": "a photo of sks person",
        "embedder": "dlib", "lpips_net": "alex", "report_name": name}}
    graph = {
        "r": {"class_type": "LoadImage", "inputs": {"image": "persona_m_ref.png"}},
        "a": {"class_type": "LoadImage", "inputs": {"image": "persona_m_a.png"}},
        "b": {"class_type": "LoadImage", "inputs": {"image": "persona_m_b.png"}},
        "pa": panel("a", "run_a"), "pb": panel("b", "run_b"),
        "c": {"class_type": "PersonaCompare", "inputs": {"metrics_a": ["pa", 0], "metrics_b": ["pb", 0]}},
        "s": {"class_type": "SaveImage", "inputs": {"images": ["c", 0], "filename_prefix": "compare"}},
    }
    entry = comfy.run_prompt(graph)
    assert entry["status"]["status_str"] == "success", entry["status"]
    rows = {r["metric"]: r for r in entry["outputs"]["pa"]["persona_metrics"]}
    assert rows["identity cosine (mean)"]["value"] > 0.98
    assert rows["LPIPS to references (alex)"]["status"].startswith("skipped")
    other = {r["metric"]: r for r in entry["outputs"]["pb"]["persona_metrics"]}
    assert other["identity cosine (mean)"]["value"] < rows["identity cosine (mean)"]["value"]
    report = comfy.output_dir / "persona" / "metrics" / "run_a" / "report.json"
    assert json.loads(report.read_text())["metrics"]
    assert (report.parent / "report.csv").is_file()
    table = entry["outputs"]["c"]["text"][0]
    assert "run_a" in table and "run_b" in table and "identity cosine (mean)" in table
    assert entry["outputs"]["s"]["images"]


def test_metrics_table_renders_in_the_real_frontend(comfy, astronaut):
    from browser_helpers import run_graph

    Image.fromarray(astronaut).save(comfy.input_dir / "persona_m_ref.png")
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(comfy.input_dir / "persona_m_a.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "persona_m_ref.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "persona_m_a.png"}},
        "3": {"class_type": "PersonaMetricsPanel", "inputs": {
            "generated": ["2", 0], "reference": ["1", 0], "prompts": "a photo of sks person",
            "embedder": "dlib", "lpips_net": "alex", "report_name": "browser_panel"}},
    }
    result = run_graph(comfy.url, prompt, f"metrics-panel-{comfy.host}", "table.persona-metrics-table")
    assert result["missing"] == []
    assert result["errors"] == [], result["errors"]
    assert "identity cosine (mean)" in result["rows"] and "Q_global" in result["rows"]
    assert result["screenshot"].is_file()
