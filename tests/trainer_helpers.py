"""Small helpers shared by the trainer tests."""
from __future__ import annotations

from comfyui_persona.trainers.config import TrainConfig


def tiny_config(model, dataset, out, **fields) -> TrainConfig:
    # the switches as each test sets them (the default, memory 'auto', would plan them on a GPU)
    base = dict(base_model=str(model), dataset=str(dataset), output_dir=str(out), resolution=64,
                steps=3, rank=4, alpha=4, learning_rate=5e-3, checkpoint_every=0, seed=0, memory="manual")
    base.update(fields)
    return TrainConfig(**base)


# every training feature a family with dropped text encoders offers, at once: prior
# preservation (class images sampled before the text encoder leaves), the identity loss through
# the family's x0, the face-weighted loss, EMA, aspect buckets, caption dropout, validation
# from cached embeddings
EVERY_FEATURE = dict(steps=4, prior_preservation=True, num_class_images=2, class_images_steps=2,
                     identity_loss_weight=0.5, identity_weights="random", identity_max_timestep=1000, masked_loss=True,
                     background_weight=0.1, ema=True, ema_export="beside", caption_dropout=0.5, aspect_buckets=True,
                     validate_every=4, validation_steps=2, validation_identity="off")


def train_every_feature(model, dataset, out, family: str, **fields):
    """(config, result, the run's start event) of a run with :data:`EVERY_FEATURE`."""
    from comfyui_persona.trainers.loop import Callbacks, train

    cfg = tiny_config(model, dataset, out, family=family, cache_dir=str(out.parent / "class_cache"),
                      **EVERY_FEATURE, **fields)
    events = {}
    return cfg, train(cfg, Callbacks(on_start=lambda info: events.update(info))), events


def assert_trained_with_every_feature(run, family: str, architecture: str) -> None:
    """Every feature of :data:`EVERY_FEATURE` left its trace, and the LoRA names its model."""
    import math

    from comfyui_persona.trainers.outputs.export import read_lora_metadata

    _cfg, result, events = run
    assert result.steps_done == 4 and result.class_images_generated == 2
    assert events["text_encoder"] is None  # every caption encoded once, then the encoder dropped
    assert all(math.isfinite(r["loss"]) and "loss_prior" in r and "loss_identity" in r for r in result.records)
    assert (result.run_dir / "samples" / "step-000004.png").is_file()  # sampled from cached embeddings
    assert result.ema_path is not None and result.ema_path.is_file()
    meta = read_lora_metadata(result.lora_path)
    assert meta["ss_base_model_version"] == family
    assert meta["modelspec.architecture"] == f"{architecture}/lora"


def assert_generates_behind_the_gate(model, lora, family: str, pipeline: str, cfg: float, folder, astronaut,
                                     capsys, negative_acts: bool = True) -> None:
    """``persona generate`` with a family's LoRA on its random-weight test model: the family read
    from the LoRA, its own diffusers ``pipeline`` with the LoRA loaded (the LoRA, and with CFG
    above its off value the negative prompt, change the image), and the identity gate scoring
    each attempt through the CLI: a random-weight model draws no face, so the gate reports it
    and keeps the best attempt."""
    import json

    from PIL import Image

    from comfyui_persona.app.cli import main
    from comfyui_persona.generation.diffusers_backend import DiffusersGenerator

    generator = DiffusersGenerator(model, lora)
    assert generator.family == family and type(generator.pipe).__name__ == pipeline
    params = {"prompt": "a photo of sks person", "seed": 1, "steps": 2, "cfg": cfg, "width": 64, "height": 64}
    with_lora = generator(params)
    assert with_lora.shape == (64, 64, 3)
    assert abs(generator({**params, "lora_strength": 0.0}).astype(int) - with_lora).max() > 0  # the LoRA acts
    if negative_acts:
        assert abs(generator({**params, "negative": "blurry"}).astype(int) - with_lora).max() > 0
    refs = folder / "refs"
    refs.mkdir()
    Image.fromarray(astronaut).save(refs / "a.png")
    off = "0" if family == "z_image" else "1"  # CFG off: Z-Image counts from 0, the others from 1
    code = main(["generate", "--base-model", str(model), "--lora", str(lora), "--reference", str(refs),
                 "--prompt", "a photo of sks person", "--max-attempts", "2", "--steps", "2", "--cfg", off,
                 "--size", "64", "--out", str(folder / "out")])
    assert code == 3, capsys.readouterr().err
    report = json.loads((folder / "out" / "generate.json").read_text())
    assert [a["reason"] for a in report["gate"]["attempts"]] == ["faceless", "faceless"]
    assert Image.open(folder / "out" / "best.png").size == (64, 64)


def assert_both_lora_files_apply_alike(pipeline_cls, model, result, forward) -> None:
    """The LoRA file for ComfyUI and the diffusers-format file, each loaded by the family's
    diffusers LoRA loader into a fresh pipeline, give the same transformer output
    (``forward(transformer)``), and it differs from the base's."""
    import torch

    outs = []
    for source in (result.lora_path, result.diffusers_lora_dir / "pytorch_lora_weights.safetensors", None):
        pipe = pipeline_cls.from_pretrained(str(model))
        if source is not None:
            pipe.load_lora_weights(str(source))
        outs.append(forward(pipe.transformer))
    assert (outs[1] - outs[2]).abs().max() > 1e-4  # the LoRA does something
    assert torch.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-3)


def flux2_transformer_out(transformer, seed=0):
    """A FLUX.2 transformer's output on fixed random inputs (8x8 patches, 8 text tokens; the
    guidance value where the model embeds one): what the LoRA-file checks compare."""
    import torch

    from comfyui_persona.models.families.flux2 import Flux2

    torch.manual_seed(seed)
    x, text = torch.randn(1, 16, 128), torch.randn(1, 8, transformer.config.joint_attention_dim)
    img_ids, txt_ids = Flux2.ids(8, 8, 8, torch.device("cpu"))
    guidance = torch.tensor([4.0]) if transformer.config.guidance_embeds else None
    with torch.no_grad():
        return transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([0.4]), guidance=guidance,
                           img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
