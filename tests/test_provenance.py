"""Responsible by default: the invisible watermark, Persona's record, C2PA content credentials
signed with a certificate made here, persona verify, and the consent record that travels from
the dataset into the LoRA."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from comfyui_persona.app.cli import main
from comfyui_persona.provenance.payload import Payload
from comfyui_persona.provenance.record import ProvenanceConfig, Record
from comfyui_persona.provenance.save import save_image
from comfyui_persona.provenance.verify import verify
from comfyui_persona.provenance.watermark import accuracy, bit_agreement, detect, embed, embed_checked

from certificates import make_signing_certificate
from trainer_helpers import tiny_config


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    cert, key = make_signing_certificate(tmp_path_factory.mktemp("cert"))
    return ProvenanceConfig(c2pa_cert=str(cert), c2pa_key=str(key))


@pytest.fixture(scope="module")
def generated(tiny_model):
    """An image the tiny model generates at 256 px, upscaled to 512 px as a hires pass would
    (the tiny model's attention at 512 px takes half a minute on a CPU)."""
    from comfyui_persona.generation.diffusers_backend import DiffusersGenerator

    small = DiffusersGenerator(tiny_model)({"prompt": "a photo of sks person", "seed": 3, "steps": 2, "cfg": 5.0,
                                            "width": 256, "height": 256})
    return np.asarray(Image.fromarray(small).resize((512, 512), Image.Resampling.LANCZOS))


def _jpeg(im, quality, subsampling=-1):
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.quick
def test_payload_bits_round_trip_and_name_the_pack():
    p = Payload("abcdef0123456789", 70000)
    back, errors = Payload.from_bits(p.bits())
    assert errors == 0 and back.lora_hash == "ab" and back.seed == 70000 % 256
    assert len(p.bits()) == 32 and p.bits()[:16] == [1, 0, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1]  # 0xA5C3
    old, errors = Payload.from_legacy_bits(p.legacy_bits())  # the DWT-DCT layout of earlier images
    assert errors == 0 and old.lora_hash == "abcdef" and old.seed == 70000 % 65536


def test_watermark_round_trip_on_photos_and_what_noise_cannot_hold(astronaut, coffee, generated):
    payload = Payload("1f2e3d", 4242)
    for image in (astronaut, coffee):
        checked = embed_checked(image, payload)
        marked = checked.image
        assert marked.shape == image.shape and marked.dtype == np.uint8
        assert checked.holds  # invisible on a photo: as trained, or twice as strong where JPEG needs it
        assert 10 * np.log10(255 ** 2 / np.mean((marked.astype(float) - image) ** 2)) > (40 if checked.strength == 1
                                                                                            else 35)
        reading = detect(marked)
        assert reading.found and reading.payload == Payload("1f", 4242 % 256) and accuracy(marked, payload) == 1.0
        assert not detect(image).found  # the unmarked image carries no payload
    # the tiny random-weight model's output is coloured noise: the read-back check strengthens
    # the mark, and where even the strongest does not hold, it says so
    noise = embed_checked(generated, payload)
    assert noise.strength > 1.0
    assert noise.holds == detect(noise.image).found
    if not noise.holds:
        assert "does not hold the mark" in noise.to_json(payload)["reason"]


def _attacks():
    import sys

    from comfy_server import REPO

    sys.path.insert(0, str(REPO / "bench"))
    import watermark_robustness

    return watermark_robustness.ATTACKS


@pytest.mark.parametrize("size", [512, 1024])
def test_the_mark_survives_what_images_go_through(astronaut, grace_hopper, coffee, size):
    """The rows of docs/benchmarks.md as assertions with a margin: after JPEG q75 and q50,
    resizing to half and back, a 10 % crop, brightness +/-20 % and a screenshot round trip,
    the mark is found and (nearly) every bit reads back."""
    photos = {"astronaut": astronaut, "Grace Hopper": grace_hopper, "coffee": coffee}
    for name, photo in photos.items():
        h, w = photo.shape[:2]
        scale = size / min(h, w)
        photo = np.asarray(Image.fromarray(photo).resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS))
        payload = Payload("c3", 1000 + size)
        marked = embed(photo, payload)
        for attack, change in _attacks().items():
            reading = detect(change(marked))
            assert reading.found and reading.pack_id_errors <= 1, (name, attack, reading.pack_id_errors)
            # the bits of that reading (RivaGAN's, not the older mark's): what accuracy() reads again
            assert not reading.legacy and bit_agreement(reading, payload) >= 0.9, (name, attack)


def test_unmarked_photos_are_not_taken_for_marked_ones(astronaut, grace_hopper, coffee, generated):
    """The false-positive side: crops and scales of photos that carry no mark, and noise."""
    rng = np.random.default_rng(7)
    found = []
    for photo in (astronaut, grace_hopper, coffee, np.asarray(Image.fromarray(generated).resize((512, 512)))):
        h, w = photo.shape[:2]
        for _ in range(6):
            ch, cw = int(rng.integers(256, h + 1)), int(rng.integers(256, w + 1))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            found.append(detect(np.ascontiguousarray(photo[y:y + ch, x:x + cw])).found)
    found += [detect(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).found for _ in range(4)]
    assert not any(found), found


def test_an_older_dwt_dct_mark_is_still_read(astronaut):
    """Images made before RivaGAN carry a 48-bit DWT-DCT mark: it is found and read."""
    import imwatermark

    payload = Payload("a1b2c3d4", 4321)
    encoder = imwatermark.WatermarkEncoder()
    encoder.set_watermark("bits", payload.legacy_bits())
    old = np.ascontiguousarray(encoder.encode(np.ascontiguousarray(astronaut[:, :, ::-1]), "dwtDct")[:, :, ::-1])
    reading = detect(old)
    assert reading.found and reading.legacy and reading.payload == Payload("a1b2c3", 4321)
    assert reading.to_json()["method"] == "invisible-watermark dwtDct"
    # an image whose record names RivaGAN is not read for the older mark, whose 8-bit pack id a
    # RivaGAN-marked image that does not hold its mark matches by chance once in 256
    assert not detect(old, legacy=False).found


def test_small_images_and_switched_off_watermarks_are_recorded_not_hidden(tmp_path, astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((200, 128)))
    record = save_image(small, tmp_path / "small.png", Record(seed=1), ProvenanceConfig())
    assert record["watermark"]["embedded"] is False and record["watermark"]["too_small"] is True
    assert record["watermark"]["reason"].startswith("too small to carry a watermark: 200x128 px")
    report = verify(tmp_path / "small.png")
    assert report["watermark"]["too_small"] and "too small to carry a watermark" in report["watermark"]["reason"]
    off = save_image(astronaut, tmp_path / "off.png", Record(seed=1), ProvenanceConfig(watermark=False))
    assert off["watermark"]["embedded"] is False and "switched off" in off["watermark"]["reason"]
    report = verify(tmp_path / "off.png")
    assert report["status"] == "ok" and not report["watermark"]["found"]
    assert report["record"]["watermark"]["reason"].startswith("switched off")


def test_content_credentials_sign_verify_and_a_tampered_file_is_invalid(tmp_path, astronaut, signing):
    record = Record(model={"name": "m", "hash": "0123"}, lora={"name": "l.safetensors", "sha256": "beef" * 16},
                    seed=5, gate={"passed": True, "best_attempt": 1})
    for suffix in (".png", ".jpg"):
        path = tmp_path / f"signed{suffix}"
        written = save_image(astronaut, path, record, signing)
        assert written["content_credentials"] == {"signed": True, "standard": "C2PA", "alg": "es256"}
        report = verify(path)
        assert report["status"] == "ok", report
        cred = report["credentials"]
        assert cred["present"] and cred["valid"] and not cred["trusted"]  # a private certificate
        assert cred["persona"]["seed"] == 5 and cred["persona"]["lora"]["sha256"] == "beef" * 16
        assert report["watermark"]["found"] and report["watermark"]["bit_agreement"] == 1.0
        assert report["record"]["ai_generated"] is True and report["record"]["seed"] == 5
    for suffix in (".png", ".jpg"):  # one byte of the image data changed
        data = bytearray((tmp_path / f"signed{suffix}").read_bytes())
        data[len(data) * 3 // 4] ^= 0xFF
        (tmp_path / f"tampered{suffix}").write_bytes(bytes(data))
        tampered = verify(tmp_path / f"tampered{suffix}")
        assert tampered["status"] == "invalid", tampered
        assert "assertion.dataHash.mismatch" in tampered["credentials"]["errors"]


def test_verify_command_reports_each_file_with_exit_codes(tmp_path, astronaut, grace_hopper, signing, capsys):
    save_image(astronaut, tmp_path / "ok.png", Record(seed=9), signing)
    Image.fromarray(grace_hopper).save(tmp_path / "plain.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["verify", str(tmp_path / "ok.png")]) == 0
    out = capsys.readouterr().out
    assert "found" in out and "seed 9 (mod 256)" in out and "valid (signer not on the C2PA trust list)" in out
    assert "pack id 16/16 bits" in out and "32/32 bits as recorded" in out and "false positives" in out
    assert "Persona" in out
    assert main(["verify", str(tmp_path / "ok.png"), str(tmp_path / "plain.png")]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "broken.png"), str(tmp_path / "ok.png")]) == 2
    capsys.readouterr()
    assert main(["verify", "--json", str(tmp_path / "ok.png")]) == 0
    assert json.loads(capsys.readouterr().out)[0]["credentials"]["valid"] is True


def test_persona_generate_saves_every_image_with_its_provenance(tiny_model, face_dataset, tmp_path, astronaut,
                                                                 signing, monkeypatch, capsys):
    from comfyui_persona.trainers.loop import train

    lora = train(tiny_config(tiny_model, face_dataset, tmp_path / "run", steps=1)).lora_path
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(astronaut).save(refs / "a.png")
    monkeypatch.setenv("PERSONA_C2PA_CERT", signing.c2pa_cert)
    monkeypatch.setenv("PERSONA_C2PA_KEY", signing.c2pa_key)
    out = tmp_path / "gen"
    code = main(["generate", "--base-model", str(tiny_model), "--lora", str(lora), "--reference", str(refs),
                 "--prompt", "a photo of sks person", "--steps", "2", "--size", "256", "--max-attempts", "2",
                 "--seed", "11", "--enhance", "sharpen", "--out", str(out)])
    assert code == 3  # a random-weight model draws no face: the gate fails, the images are still marked
    capsys.readouterr()
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["attempt-01.png", "attempt-02.png", "best.png", "enhanced.png"]
    for f, seed in zip(files, (11, 12, 11, 11)):
        report = verify(f)
        assert report["status"] == "ok" and report["credentials"]["valid"], f
        made = report["record"]["watermark"]
        assert made["embedded"] and made["payload"]["seed_mod_256"] == seed % 256, f
        assert report["record"]["lora"]["sha256"][:2] == made["payload"]["lora_hash_prefix"]
        # the tiny model draws coloured noise at 256 px, which may not hold the mark: what the
        # record said when the image was made is what verify finds
        assert report["watermark"]["found"] == made["holds"], f
        if made["holds"]:
            assert report["watermark"]["payload"]["seed_mod_256"] == seed % 256, f
        else:
            assert "does not hold the mark" in report["watermark"]["reason"], f
        assert report["watermark"]["false_positive_rate"]
    assert verify(out / "enhanced.png")["record"]["kind"] == "enhanced"
    assert verify(out / "best.png")["record"]["gate"]["passed"] is False


def test_consent_is_recorded_carried_as_a_hash_and_enforced(tiny_model, tmp_path, monkeypatch, caplog):
    from comfyui_persona.core.config import ConfigError
    from comfyui_persona.faces.samples import write_subject_photos
    from comfyui_persona.trainers.loop import train
    from comfyui_persona.trainers.outputs.export import read_lora_metadata

    photos = tmp_path / "photos"
    write_subject_photos(photos, count=3)
    (tmp_path / "consent-signed.pdf").write_bytes(b"%PDF-1.4 signed consent of Eileen")
    consent = tmp_path / "consent.yaml"
    consent.write_text("subject: Eileen C.\nconsented_by: Eileen C.\ndate: 2026-11-01\n"
                       "uses: [train a personal LoRA, portraits for her own use]\ndocument: consent-signed.pdf\n")
    assert main(["prepare", str(photos), str(tmp_path / "ds"), "--consent", str(consent),
                 "--config", str(_config(tmp_path))]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    record = manifest["consent"]
    assert record["subject"] == "Eileen C." and record["uses"][0] == "train a personal LoRA"
    assert len(record["document_sha256"]) == 64 and "document" not in record and len(record["record_sha256"]) == 64
    # re-running prepare without --consent keeps the record
    assert main(["prepare", str(photos), str(tmp_path / "ds"), "--config", str(_config(tmp_path))]) == 0
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["consent"] == record
    lora = train(tiny_config(tiny_model, tmp_path / "ds", tmp_path / "run", steps=1)).lora_path
    meta = read_lora_metadata(lora)
    assert meta["persona.consent_sha256"] == record["record_sha256"]
    assert "Eileen" not in json.dumps({k: v for k, v in meta.items() if k != "persona.config"})
    full = read_lora_metadata(train(tiny_config(tiny_model, tmp_path / "ds", tmp_path / "run-full", steps=1,
                                                consent_in_metadata=True)).lora_path)
    assert json.loads(full["persona.consent_record"])["subject"] == "Eileen C."
    # a dataset without a record: a warning, or a refusal before any model loads
    assert main(["prepare", str(photos), str(tmp_path / "plain"), "--config", str(_config(tmp_path))]) == 0
    import comfyui_persona.models.loading as loading

    monkeypatch.setattr(loading, "load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match="require_consent: dataset .* has no consent record"):
        train(tiny_config(tiny_model, tmp_path / "plain", tmp_path / "refused", steps=1, require_consent=True))
    monkeypatch.setenv("PERSONA_REQUIRE_CONSENT", "1")
    with pytest.raises(ConfigError, match="PERSONA_REQUIRE_CONSENT"):
        train(tiny_config(tiny_model, tmp_path / "plain", tmp_path / "refused2", steps=1))
    monkeypatch.delenv("PERSONA_REQUIRE_CONSENT")
    caplog.set_level("WARNING")
    tiny_config(tiny_model, tmp_path / "plain", tmp_path / "warned", steps=1).check_paths()
    assert "has no consent record" in caplog.text


def test_a_bad_consent_record_names_the_field(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    bad = tmp_path / "consent.yaml"
    bad.write_text("subject: X\nconsented_by: X\ndate: not-a-date\nuses: []\n")
    assert main(["prepare", str(photos), str(tmp_path / "ds"), "--consent", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "date" in err and "uses" in err


def _config(tmp_path):
    path = tmp_path / "prepare.yaml"
    path.write_text("resolution: 64\n")
    return path
