"""The fused backward pass under data parallelism (trainers/memory/per_tensor.py): two gloo
processes started the way Windows starts them (spawn), each stepping its tensors inside its own
backward pass, hold identical weights after every step, equal to one process training on both
processes' batches together."""
from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from comfy_server import free_port

STEPS = 5


def _model_and_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    batches = [(torch.randn(4, 8), torch.randn(4, 4)) for _ in range(STEPS)]
    return model, batches


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from comfyui_persona.trainers.memory.per_tensor import PerTensorOptimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, batches = _model_and_batches()
        opt = PerTensorOptimizer([{"params": list(model.parameters()), "lr": 1e-2}],
                                 lambda gs: torch.optim.AdamW(gs), fused=True)
        assert opt.world == world
        for x, y in batches:
            share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)  # this process's half
            torch.nn.functional.mse_loss(model(x[share]), y[share]).backward()  # each tensor steps in here
            opt.step()
            opt.zero_grad()
        torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_with_the_fused_backward_pass_stay_one_model(tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # one model, bit for bit
    model, batches = _model_and_batches()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x, y in batches:  # one process, both halves together: the mean of the halves' means
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    together = model.state_dict()
    assert max((ranks[0][k] - together[k]).abs().max().item() for k in together) <= 1e-6
    assert max((together[k] - start[k]).abs().max().item() for k in together) > 1e-2  # it trained
