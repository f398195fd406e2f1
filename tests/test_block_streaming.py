"""Per-block memory switches (trainers/memory/blocks.py): a streamed step gives the same
weights as an in-memory step (SD1.x and FLUX, with and without checkpointing, an fp8 base's
8-bit weights too), streamed weights are away between uses, selective checkpointing recomputes
only some blocks, and the planner's simulation sees both."""
from __future__ import annotations

import pytest
import torch

from comfyui_persona.trainers.config import TrainConfig
from comfyui_persona.trainers.loop import Callbacks, train

from trainer_helpers import tiny_config


def _run(model, dataset, out, **fields):
    kept, seen = {}, {"placeholders": [], "fetches": []}

    def on_log(record):
        streamer = kept["denoiser"]._persona_streamer
        if streamer is not None:  # between steps: every streamed weight is away from the device
            seen["placeholders"].append(all(p.numel() == 0 for ps in streamer._params for p in ps))
            seen["fetches"].append(streamer.fetches)
            seen["host"] = [(t.dtype, tuple(t.shape)) for t in streamer.host_tensors()]

    result = train(tiny_config(model, dataset, out, **fields),
                   Callbacks(on_start=lambda info: kept.update(info), on_log=on_log))
    lora = {k: v.detach().clone() for k, v in kept["denoiser"].state_dict().items() if "lora_" in k}
    return result, lora, seen


def _same_training(device, plain, expected, result, got, fields):
    """The streamed run trains as the resident one: on the CPU bit for bit; on CUDA (TF32 off,
    see ``_cuda_fields``) within fp32 rounding. A streamed layer's own autograd function computes
    its input gradient in a matmul of its own, which cuBLAS may run with another kernel (another
    split of the reduction) than autograd's linear backward: the same sums in another order. A
    block computing with a stale or missing weight moves the loss by orders of magnitude more."""
    losses, want = [r["loss"] for r in result.records], [r["loss"] for r in plain.records]
    if device == "cpu":
        assert losses == want, fields
        for k in expected:
            assert torch.equal(expected[k], got[k]), (fields, k)
        return
    assert losses == pytest.approx(want, rel=1e-5), fields
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-7, msg=lambda m: f"{fields} {k}: {m}")


def _cuda_fields(device) -> dict:
    """On CUDA, fp32 products in fp32: with TF32 (the default) the two runs' different kernels
    round to 10 bits differently (measured on an H200: the second step's loss 1.494519 streamed
    vs 1.495049 resident, FLUX on an fp8 base), which would hide a real difference."""
    return {"tf32": False} if device == "cuda" else {}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])  # cuda: the side stream
@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_a_streamed_step_gives_the_in_memory_weights(family, device, tiny_model, tiny_flux, face_dataset, tmp_path):
    model = tiny_model if family == "sd15" else tiny_flux
    base = dict(family=family, steps=3, device=device, **_cuda_fields(device))
    plain, expected, _ = _run(model, face_dataset, tmp_path / "plain", **base)
    assert expected
    for i, fields in enumerate([dict(stream_blocks=3),
                                dict(stream_blocks=3, gradient_checkpointing=True),
                                dict(stream_blocks=2, gradient_checkpointing=True, checkpoint_blocks=2)]):
        result, got, seen = _run(model, face_dataset, tmp_path / f"streamed{i}", **base, **fields)
        _same_training(device, plain, expected, result, got, fields)
        assert seen["placeholders"] == [True] * 3, fields
        # each streamed block comes in for its forward and again for its backward, every step
        per_step = [b - a for a, b in zip([0] + seen["fetches"], seen["fetches"])]
        assert all(n >= 2 * fields["stream_blocks"] for n in per_step), (fields, per_step)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])  # cuda: pinned fp8, side stream
def test_an_fp8_base_streams_its_8_bit_weights(device, tiny_flux, face_dataset, tmp_path):
    """quantize_base fp8 with streamed blocks (FLUX, with and without checkpointing): the same
    losses and LoRA weights as the fp8 base kept in memory (the fp8 layer's own autograd
    function reads the fetched weight again in backward), every streamed weight and row scale
    away between steps, and what stays in host memory is the 8-bit weights, not a bf16 copy."""
    base = dict(family="flux", steps=3, quantize_base="fp8", device=device, **_cuda_fields(device))
    plain, expected, _ = _run(tiny_flux, face_dataset, tmp_path / "plain", **base)
    assert expected
    for i, fields in enumerate([dict(stream_blocks=3), dict(stream_blocks=3, gradient_checkpointing=True)]):
        result, got, seen = _run(tiny_flux, face_dataset, tmp_path / f"streamed{i}", **base, **fields)
        _same_training(device, plain, expected, result, got, fields)
        assert seen["placeholders"] == [True] * 3, fields
        weights = [dtype for dtype, shape in seen["host"] if len(shape) == 2 and shape[1] > 1]  # not [rows, 1] scales
        assert weights and set(weights) == {torch.float8_e4m3fn}, seen["host"]
        per_step = [b - a for a, b in zip([0] + seen["fetches"], seen["fetches"])]
        assert all(n >= 2 * fields["stream_blocks"] for n in per_step), (fields, per_step)


def test_an_unfetched_weight_fails_loudly():
    from comfyui_persona.trainers.memory.blocks import BlockStreamer

    block = torch.nn.Sequential(torch.nn.Linear(4, 4)).requires_grad_(False)
    streamer = BlockStreamer([block], "cpu")
    assert block[0].weight.numel() == 0
    with pytest.raises(RuntimeError):
        torch.nn.functional.linear(torch.ones(1, 4), block[0].weight)
    out = block(torch.ones(1, 4))  # through the block's hooks: fetched, used, evicted
    assert out.shape == (1, 4) and block[0].weight.numel() == 0
    streamer.close()
    assert block[0].weight.shape == (4, 4)


def _saved_bytes(model, dataset, tmp_path, **fields) -> int:
    """Bytes autograd keeps for backward over one training step (outside checkpointed blocks,
    whose own hooks keep only their inputs)."""
    total = {"n": 0}

    def pack(t):
        total["n"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train(tiny_config(model, dataset, tmp_path / f"run{len(fields)}{fields.get('checkpoint_blocks', 0)}",
                          steps=1, **fields))
    return total["n"]


def test_selective_checkpointing_saves_between_none_and_all(tiny_model, face_dataset, tmp_path):
    none = _saved_bytes(tiny_model, face_dataset, tmp_path)
    some = _saved_bytes(tiny_model, face_dataset, tmp_path, gradient_checkpointing=True, checkpoint_blocks=3)
    everything = _saved_bytes(tiny_model, face_dataset, tmp_path, gradient_checkpointing=True)
    assert everything < some < none, (everything, some, none)


def test_the_simulation_sees_streaming_and_selective_checkpointing():
    from comfyui_persona.trainers.memory.simulate import simulate_peak

    def peak(**fields):
        cfg = TrainConfig(base_model="x", dataset="y", family="sd15", resolution=64, mixed_precision="bf16", **fields)
        return simulate_peak("sd15", cfg, size="tiny")

    plain = peak()
    # the tiny UNet has 12 blocks; streamed blocks hold no weights on the device but while they
    # run (two at a time: one computing, one arriving)
    assert peak(stream_blocks=11) < peak(stream_blocks=6) < plain
    # an fp8 base's streamed blocks: its 8-bit weights arrive (half of bf16's bytes)
    assert peak(quantize_base="fp8", stream_blocks=11) < peak(quantize_base="fp8")
    ckpt_all = peak(gradient_checkpointing=True)
    ckpt_three = peak(gradient_checkpointing=True, checkpoint_blocks=3)
    assert ckpt_all < ckpt_three < plain, (ckpt_all, ckpt_three, plain)


@pytest.mark.parametrize("fields, message", [
    (dict(stream_blocks=2, method="dreambooth"), "stream_blocks: only frozen weights are streamed"),
    (dict(stream_blocks=2, use_dora=True), "stream_blocks: only frozen weights are streamed"),
    (dict(stream_blocks=2, quantize_base="nf4"), "stream_blocks: full-precision and fp8 weights are streamed"),
    (dict(checkpoint_blocks=2), "checkpoint_blocks: selects which blocks"),
    (dict(cuda_graphs=True), "cuda_graphs: the graphs capture the compiled blocks"),
    (dict(compile="blocks", cuda_graphs=True, gradient_accumulation=2), "cuda_graphs: gradients made inside"),
    (dict(compile="blocks", cuda_graphs=True, grad_set_to_none=False), "cuda_graphs: gradients made inside"),
])
def test_config_refuses_what_cannot_work(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(base_model="m", dataset="d", **fields)


def test_more_blocks_than_the_model_has_is_a_clear_error(tiny_model, face_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"stream_blocks: 999 is more than the denoiser's \d+ repeated blocks"):
        train(tiny_config(tiny_model, face_dataset, tmp_path / "run", stream_blocks=999))
