"""Captions from a local vision-language model (BLIP, GIT; Florence-2 and chat models take the
same path), loaded with transformers from a folder: tiny random-weight models of the real
architectures, so the captions are words of their vocabularies, not descriptions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from comfyui_persona.faces.captions import VisionCaptioner
from comfyui_persona.faces.config import PrepareConfig
from comfyui_persona.faces.dataset import prepare_dataset
from comfyui_persona.faces.samples import write_subject_photos

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "person", "smiling", "in", "orange",
         "suit", "studio", "light", "with", "flag", "blue", "sky", "hair"]
TEXT = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=64)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
              patch_size=16)


def _tokenizer():
    return T.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def tiny_blip(folder):
    torch.manual_seed(0)
    cfg = T.BlipConfig(text_config=dict(TEXT, bos_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=3),
                       vision_config=VISION, projection_dim=32)
    T.BlipForConditionalGeneration(cfg).save_pretrained(folder)
    T.BlipProcessor(T.BlipImageProcessor(size={"height": 32, "width": 32}), _tokenizer()).save_pretrained(folder)
    return folder


def tiny_git(folder):
    torch.manual_seed(0)
    cfg = T.GitConfig(vision_config=VISION, **TEXT, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    T.GitForCausalLM(cfg).save_pretrained(folder)
    T.GitProcessor(T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   _tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {"blip": tiny_blip(root / "blip"), "git": tiny_git(root / "git")}


@pytest.mark.parametrize("kind", ["blip", "git"])
def test_a_local_model_captions_as_its_own_generate_does(models, kind, astronaut):
    captioner = VisionCaptioner(str(models[kind]))
    text = captioner(astronaut)
    processor = T.AutoProcessor.from_pretrained(models[kind])
    model = (T.BlipForConditionalGeneration if kind == "blip" else T.GitForCausalLM).from_pretrained(models[kind])
    ids = model.generate(**processor(images=astronaut, return_tensors="pt"), max_new_tokens=40, do_sample=False)
    expected = " ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())
    assert text == expected and text and all(w in WORDS for w in text.split())


def test_prepare_appends_the_model_caption_to_the_template(models, tmp_path):
    write_subject_photos(tmp_path / "photos", count=3)
    cfg = PrepareConfig(resolution=64, auto_caption="vlm", caption_model=str(models["blip"]))
    result = prepare_dataset(tmp_path / "photos", tmp_path / "dataset", cfg)
    captioner = VisionCaptioner(str(models["blip"]))
    for entry in result.accepted:
        assert entry["caption_source"] == "vlm"
        image = np.asarray(Image.open(tmp_path / "dataset" / entry["image"]).convert("RGB"))
        assert entry["caption"] == f"a photo of sks person, {captioner(image)}"
        assert (tmp_path / "dataset" / entry["caption_file"]).read_text().strip() == entry["caption"]
    manifest = json.loads((tmp_path / "dataset" / "manifest.json").read_text())
    assert manifest["config"]["caption_model"] == str(models["blip"])


def test_a_vlm_caption_needs_its_model_and_a_missing_one_falls_back_to_the_template(tmp_path, caplog):
    with pytest.raises(ValueError, match="caption_model"):
        PrepareConfig(auto_caption="vlm")
    write_subject_photos(tmp_path / "photos", count=3)
    cfg = PrepareConfig(resolution=64, auto_caption="vlm", caption_model=str(tmp_path / "no-such-model"))
    result = prepare_dataset(tmp_path / "photos", tmp_path / "dataset", cfg)
    assert result.accepted[0]["caption_source"] == "template"
    assert "no-such-model" in caplog.text
