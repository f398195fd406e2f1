"""The identity gate as a pure function, with the real dlib embedder and real photos."""
from __future__ import annotations

import pytest

from comfyui_persona.faces.identity import NoFaceError, get_embedder
from comfyui_persona.generation.gate import GateSettings, attempt_params, gated_generate


def scripted(images):
    calls = []

    def generate(params):
        calls.append(params)
        return images[len(calls) - 1]

    return generate, calls


@pytest.mark.quick
def test_gate_stops_when_identity_passes_and_reports_faceless(astronaut, grace_hopper, coffee):
    generate, calls = scripted([grace_hopper, coffee, astronaut])
    result = gated_generate(generate, get_embedder("dlib"), [astronaut], {"seed": 10, "cfg": 7.0},
                            GateSettings(max_attempts=5))
    assert len(calls) == 3 and result.passed and result.best_index == 3
    assert [a.reason for a in result.attempts] == ["below threshold", "faceless", None]
    assert result.attempts[1].score is None
    assert [c["seed"] for c in calls] == [10, 11, 12]
    assert result.best_image is astronaut
    assert result.to_json()["attempts"][2]["passed"] is True


def test_gate_returns_the_best_and_fail_when_attempts_run_out(astronaut, grace_hopper, coffee):
    generate, calls = scripted([grace_hopper, coffee, astronaut])
    result = gated_generate(generate, get_embedder("dlib"), [astronaut], {"seed": 0},
                            GateSettings(max_attempts=2))
    assert len(calls) == 2 and not result.passed
    assert result.best_index == 1 and result.best_image is grace_hopper
    assert len(result.images) == 2


def test_adjustment_policy_is_recorded():
    s = GateSettings(cfg_schedule=[7.0, 5.5], steps_schedule=[20, 30, 40], lora_strength_step=0.25,
                     lora_strength_max=1.2)
    base = {"seed": 5, "cfg": 7.0, "steps": 20, "lora_strength": 0.8}
    third = attempt_params(base, s, 2)
    assert third == {"seed": 7, "cfg": 5.5, "steps": 40, "lora_strength": 1.2}


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_unit_interval_is_refused(astronaut, threshold):
    with pytest.raises(ValueError, match="threshold"):
        gated_generate(lambda p: astronaut, get_embedder("dlib"), [astronaut], {"seed": 0},
                       GateSettings(threshold=threshold))


def test_reference_without_face_or_empty_is_refused(astronaut, coffee):
    with pytest.raises(NoFaceError, match="reference"):
        gated_generate(lambda p: astronaut, get_embedder("dlib"), [coffee], {"seed": 0})
    with pytest.raises(ValueError, match="empty"):
        gated_generate(lambda p: astronaut, get_embedder("dlib"), [], {"seed": 0})
