"""The confinement rule headless (``core.confine`` and the checks built on it), without a
server: what a node's values may lead to once ComfyUI's folders are the roots."""
from __future__ import annotations

import pytest

from comfyui_persona.core import confine
from comfyui_persona.core.config import ConfigError


@pytest.fixture
def roots(tmp_path):
    comfy = tmp_path / "ComfyUI"
    folders = {"input": comfy / "input", "output": comfy / "output", "models": comfy / "models"}
    for f in folders.values():
        f.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("CANARY")
    with confine.confined_to(folders, {str(comfy): "ComfyUI"}):
        yield {**folders, "outside": outside, "comfy": comfy}


@pytest.mark.quick
def test_relative_paths_stay_inside_and_messages_use_labels(roots):
    assert confine.relative("persona/photos", "folder", roots["input"]) == (roots["input"] / "persona/photos").resolve()
    assert confine.relative("persona\\photos", "folder", roots["input"]).name == "photos"  # Windows separators
    for bad in ("/etc", str(roots["outside"]), "~", "~/x", "C:/Windows", "../../outside", "a\x00b", "a" * 2000):
        with pytest.raises(confine.PathRefused) as exc:
            confine.relative(bad, "folder", roots["input"])
        assert str(exc.value).startswith("folder: ")
        assert str(roots["comfy"]) not in str(exc.value)
    (roots["input"] / "link").symlink_to(roots["outside"], target_is_directory=True)
    with pytest.raises(confine.PathRefused, match="leads outside"):
        confine.relative("link", "folder", roots["input"])
    assert confine.shown(roots["output"] / "persona" / "x") == "output/persona/x"
    assert confine.scrub(f"cannot read {roots['comfy']}/custom_nodes/x.py") == "cannot read ComfyUI/custom_nodes/x.py"


def test_headless_paths_are_the_callers_own(tmp_path):
    assert confine.active() is None
    assert confine.relative(str(tmp_path), "folder", tmp_path / "base") == tmp_path
    assert confine.allowed("/etc/passwd")


@pytest.mark.quick
def test_carried_values_are_revalidated(roots):
    from comfyui_persona.nodes import carried

    datasets = roots["output"] / "persona" / "datasets"
    good = {"path": str(datasets / "ada"), "token": "sks", "class_noun": "person", "resolution": 512}
    assert carried.dataset(good, datasets)["path"] == str((datasets / "ada").resolve())
    for bad in ({**good, "path": str(roots["outside"])}, {**good, "path": str(datasets / ".." / ".." / "..")},
                {"__value__": good}, "x", {**good, "token": 3}, {**good, "path": "a" * 5000}):
        with pytest.raises(ValueError, match="^dataset: "):
            carried.dataset(bad, datasets)
    loras = roots["models"] / "loras"
    loras.mkdir()
    (loras / "a.safetensors").write_bytes(b"{}")
    (loras / "b.txt").write_text("x")
    lora = {"path": str(loras / "a.safetensors"), "token": "sks", "class_noun": "person"}
    assert carried.lora(lora, [loras])["path"].endswith("a.safetensors")
    for path in ("/etc/passwd", str(roots["outside"] / "secret.txt"), str(loras / "b.txt"), str(loras / "none.safetensors")):
        with pytest.raises(ValueError, match="^lora: ") as exc:
            carried.lora({**lora, "path": path}, [loras])
        assert "CANARY" not in str(exc.value)


def test_consent_document_and_linked_files_inside_allowed_folders(roots):
    from comfyui_persona.faces.captions import user_caption
    from comfyui_persona.faces.consent import read_consent
    from comfyui_persona.faces.photos import PhotoError, list_photos, load_photo
    from comfyui_persona.faces.samples import write_subject_photos

    consent = roots["input"] / "consent.yaml"
    for document in (str(roots["outside"] / "secret.txt"), "../../outside/secret.txt", "../../outside/none.txt"):
        consent.write_text(f"subject: A\nconsented_by: A\ndate: 2026-01-01\nuses: [a LoRA]\ndocument: {document}\n")
        with pytest.raises(ConfigError, match="document") as exc:
            read_consent(consent)
        assert "is not a file" not in str(exc.value)  # refused before anything looks
    (roots["input"] / "doc.pdf").write_bytes(b"signed")
    consent.write_text("subject: A\nconsented_by: A\ndate: 2026-01-01\nuses: [a LoRA]\ndocument: doc.pdf\n")
    assert len(read_consent(consent)["document_sha256"]) == 64

    photos = roots["input"] / "photos"
    first = write_subject_photos(photos, count=3)[0]
    first.with_suffix(".txt").symlink_to(roots["outside"] / "secret.txt")
    assert user_caption(first) is None
    outside_photo = write_subject_photos(roots["outside"] / "p", count=3)[0]
    (photos / "zz.png").symlink_to(outside_photo)
    (photos / "zz_noext").symlink_to(outside_photo)
    listed = [p.name for p in list_photos(photos)]
    assert "zz.png" in listed and "zz_noext" not in listed  # never opened to find out what it is
    with pytest.raises(PhotoError, match="outside ComfyUI's folders"):
        load_photo(photos / "zz.png")


def test_sweep_runs_set_training_fields_only_and_get_plain_folders(tmp_path):
    from comfyui_persona.studies.config import SweepConfig
    from comfyui_persona.studies.sweep import plan

    base = {"base_model": str(tmp_path), "dataset": str(tmp_path)}
    for spec in ({"axes": {"output_dir": ["/x"]}}, {"variants": [{"dataset": "/x"}]},
                 {"axes": {"rank": [2]}, "overrides": {"t5": "/x"}}, {"variants": [{"device": "cuda"}]}):
        with pytest.raises(ConfigError, match="cannot be set per run"):
            SweepConfig.from_dict({"base": base, "output_dir": str(tmp_path / "sweep"), **spec})
    cfg = SweepConfig.from_dict({"base": base, "output_dir": str(tmp_path / "sweep"),
                                 "variants": [{"name": "..", "steps": 1}, {"name": "../../x", "steps": 2}]})
    for run in plan(cfg):
        out = (tmp_path / "sweep" / run.name).resolve()
        assert out.parent == (tmp_path / "sweep").resolve() and ".." not in run.name


def test_nan_is_a_field_error():
    from comfyui_persona.trainers.memory.planner import plan_request

    with pytest.raises(ConfigError, match="vram_budget_gb"):
        plan_request("sd15", "lora", 512, 1, 1, 16, False, float("nan"))
