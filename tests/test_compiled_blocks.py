"""Regional compilation (``compile: blocks``, trainers/speed/switches.py) traced by the real
Dynamo and AOTAutograd on CPU, with ``aot_eager`` (AOTAutograd's forward and backward graphs
run by eager kernels; Inductor's GPU kernels need CUDA, and the GPU lane runs those): every
repeated block of the published SD1.5, SDXL and FLUX denoisers gets a compiled graph, none
falls back to eager at Dynamo's recompile limit, and LoRA training through the compiled
blocks follows the eager run step for step."""
from __future__ import annotations

import sys
from contextlib import nullcontext

import pytest
import torch

from comfy_server import REPO


def _config(family, resolution, **fields):
    sys.path.insert(0, str(REPO / "bench"))
    import train_memory

    return train_memory.config(family, "lora", resolution, fields, rank=4)


def _trainable(family, size, cfg, device):
    from comfyui_persona.models.architectures import instantiate, meta_components
    from comfyui_persona.trainers.loop.step import make_trainable

    comps = meta_components(family, None, size) if device == "meta" else \
        instantiate(family, size, tokenizers=False, text_encoders=False)
    groups = make_trainable(comps, cfg, torch.device(device), torch.float32)
    return comps, groups


def _predict(comps, cfg, device, gen, steps=1, optimizer=None):
    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.loop.step import forward_backward

    fam = get_family(comps.family)
    shape = fam.latent_shape(comps, cfg.resolution)
    losses = []
    for _ in range(steps):
        latents = torch.randn((1, *shape), generator=gen).to(device)
        cond = fam.dummy_condition(comps, 1, torch.device(device), torch.float32, cfg)
        if optimizer is None:  # the forward pass only: what Dynamo guards on
            fam.predict(comps, comps.denoiser, latents, cond, gen, cfg, torch.float32)
            continue
        loss, _ = forward_backward(comps, comps.denoiser, latents, cond, gen, cfg, torch.float32, nullcontext())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family, resolution", [("sd15", 512), ("sdxl", 1024), ("flux", 1024)])
def test_every_block_of_the_published_denoisers_is_compiled(family, resolution):
    """At the published sizes, on the meta device: each block class comes in many shapes (SD1.5's
    resnet blocks in 15), more than Dynamo's default limit of 8 graphs per code object, past
    which blocks would silently run eagerly."""
    from torch._dynamo.utils import counters

    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.speed.switches import compile_blocks

    graphs = []

    def counting_backend(gm, example_inputs):  # runs each traced graph as it is
        graphs.append(gm)
        return gm.forward

    cfg = _config(family, resolution)
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        torch._dynamo.reset()
        counters.clear()
        comps, _ = _trainable(family, "real", cfg, "meta")
        blocks = get_family(family).repeated_blocks(comps.denoiser)
        assert compile_blocks(blocks, backend=counting_backend) == len(blocks)
        assert torch._dynamo.config.recompile_limit >= len(blocks)
        _predict(comps, cfg, "meta", torch.Generator().manual_seed(0))
        frames = dict(counters["frames"])
        breaks = dict(counters["graph_break"])
        torch._dynamo.reset()
    # every frame Dynamo saw became a graph: none was left to eager at the limit
    assert frames["total"] == frames["ok"], frames
    assert not breaks, breaks
    # blocks of one class and shape share a graph: fewer graphs than blocks, more than classes
    assert 2 <= len(graphs) < len(blocks), (len(graphs), len(blocks))


@pytest.mark.parametrize("family, fields", [
    ("sd15", {}),
    ("sd15", {"gradient_checkpointing": True}),
    ("sdxl", {}),
    ("sdxl", {"gradient_checkpointing": True, "checkpoint_blocks": 3}),
    ("sdxl", {"quantize_base": "fp8"}),
    ("flux", {"gradient_checkpointing": True}),
], ids=["sd15", "sd15-checkpointing", "sdxl", "sdxl-selective-checkpointing", "sdxl-fp8-base", "flux-checkpointing"])
def test_lora_training_through_compiled_blocks_follows_the_eager_run(family, fields):
    """Tiny random-weight models: the LoRA layers and attention processors inside the blocks
    trace without a graph break, and 4 steps give the eager losses and weights (within 1e-6)."""
    from torch._dynamo.utils import counters

    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.memory.techniques import build_optimizer
    from comfyui_persona.trainers.speed.switches import compile_blocks

    cfg = _config(family, 64, **fields).model_copy(update={"learning_rate": 1e-3})
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        comps, groups = _trainable(family, "tiny", cfg, "cpu")
        if compiled:
            compile_blocks(get_family(family).repeated_blocks(comps.denoiser), backend="aot_eager")
        optimizer = build_optimizer(groups, cfg, torch.device("cpu"))
        losses = _predict(comps, cfg, "cpu", torch.Generator().manual_seed(0), steps=4, optimizer=optimizer)
        lora = {n: p.detach().clone() for n, p in comps.denoiser.named_parameters() if p.requires_grad}
        runs.append((losses, lora, dict(counters["graph_break"]), dict(counters["aot_autograd"])))
    torch._dynamo.reset()
    (eager, eager_lora, _, _), (losses, lora, breaks, aot) = runs
    assert not breaks, breaks
    assert aot.get("ok", 0) >= 1, aot  # the blocks went through AOTAutograd (forward and backward)
    assert losses == pytest.approx(eager, abs=1e-6), (losses, eager)
    assert lora.keys() == eager_lora.keys() and lora
    # with an fp8 base the traced graph applies the dequantizing scale in another order than
    # the eager layer (floating-point reassociation: about 2e-6 on weights of 4e-3 after 4 steps
    # at lr 1e-3); every other case agrees within 1e-6
    tolerance = 1e-5 if fields.get("quantize_base") == "fp8" else 1e-6
    for name, p in lora.items():
        assert torch.allclose(p, eager_lora[name], atol=tolerance), (name, (p - eager_lora[name]).abs().max().item())
    assert any(p.abs().max() > 0 for n, p in lora.items() if "lora_B" in n)  # trained: B starts at zero


def test_the_benchmark_step_gives_the_same_loss_curve_twice():
    """The GPU lane compares compiled and eager loss curves from ``run_steps``: on the same
    model it draws the same data and noise, so two runs give one curve (here compile falls
    back to eager, with its log line)."""
    from comfyui_persona.models.architectures import instantiate
    from comfyui_persona.trainers.memory.simulate import run_steps

    curves = []
    for extra in ({}, {"compile": "blocks"}):
        comps = instantiate("sd15", "tiny", tokenizers=False, text_encoders=False)
        out = run_steps(comps, _config("sd15", 64, **extra), "cpu", steps=5)
        assert len(out["losses"]) == 5 and out["loss"] == out["losses"][-1]
        curves.append(out["losses"])
    assert curves[0] == curves[1] and len(set(curves[0])) == 5, curves


def test_cuda_graphs_are_kept_only_where_checkpointing_is_inside_the_compiled_blocks():
    """Diffusers' checkpointing of every block recomputes a compiled block from outside it,
    which CUDA graph trees cannot record: those runs compile without graphs. Selective
    checkpointing wraps the block's own forward, so its compiled graph holds the checkpoint."""
    from torch._dynamo.utils import counters

    from comfyui_persona.models.families import get_family
    from comfyui_persona.trainers.speed.switches import compile_blocks, graphs_unsupported

    graphed = dict(compile="blocks", cuda_graphs=True)
    assert "154306" in graphs_unsupported(_config("sdxl", 64, gradient_checkpointing=True, **graphed))
    assert graphs_unsupported(_config("sdxl", 64, gradient_checkpointing=True, checkpoint_blocks=3, **graphed)) is None
    assert graphs_unsupported(_config("sdxl", 64, **graphed)) is None

    holds_checkpoint = []

    def backend(gm, example_inputs):
        holds_checkpoint.append(any("checkpoint" in str(n.target) for n in gm.graph.nodes))
        return gm.forward

    cfg = _config("sdxl", 64, gradient_checkpointing=True, checkpoint_blocks=3)
    torch._dynamo.reset()
    counters.clear()
    comps, groups = _trainable("sdxl", "tiny", cfg, "cpu")
    blocks = get_family("sdxl").repeated_blocks(comps.denoiser)
    compile_blocks(blocks, backend=backend)
    _predict(comps, cfg, "cpu", torch.Generator().manual_seed(0), steps=1,
             optimizer=torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.0))
    breaks = dict(counters["graph_break"])
    torch._dynamo.reset()
    assert not breaks, breaks
    # the checkpointed blocks' graphs hold their checkpoint, the others' do not
    assert any(holds_checkpoint) and not all(holds_checkpoint), holds_checkpoint


def test_a_compiled_block_that_fails_falls_back_to_eager_for_the_rest_of_the_run(tiny_model, face_dataset, tmp_path,
                                                                                  monkeypatch, caplog):
    """A ``torch.compile`` backend that raises at the first compiled call: the run repeats that
    step eagerly and stays eager, with one log line naming the error; its losses and weights are
    the eager run's."""
    import logging

    from torch._dynamo import register_backend

    from comfyui_persona.trainers.loop import Callbacks, train
    from comfyui_persona.trainers.speed.switches import BACKEND_ENV
    from trainer_helpers import tiny_config

    @register_backend(name="persona_test_raises")
    def raising_backend(gm, example_inputs):
        raise RuntimeError("this backend always fails")

    def run(out, **fields):
        kept = {}
        result = train(tiny_config(tiny_model, face_dataset, out, steps=3, **fields),
                       Callbacks(on_start=lambda info: kept.update(info)))
        return result, {k: v.detach().clone() for k, v in kept["denoiser"].state_dict().items() if "lora" in k}

    eager, eager_lora = run(tmp_path / "eager")
    monkeypatch.setenv(BACKEND_ENV, "persona_test_raises")
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="comfyui_persona.trainers.speed.switches"):
        fell_back, lora = run(tmp_path / "compiled", compile="blocks")
    torch._dynamo.reset()
    lines = [r.getMessage() for r in caplog.records if "compiled blocks failed" in r.getMessage()]
    assert len(lines) == 1 and "this backend always fails" in lines[0], lines
    assert fell_back.steps_done == 3
    assert [r["loss"] for r in fell_back.records] == [r["loss"] for r in eager.records]
    assert lora.keys() == eager_lora.keys() and lora
    assert all(torch.equal(lora[k], eager_lora[k]) for k in lora)
