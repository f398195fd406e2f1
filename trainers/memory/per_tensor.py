"""The optimizer step one tensor at a time: fused into the backward pass, and bf16 weights
updated with stochastic rounding.

A plain step keeps every gradient until ``optimizer.step()``: for a full fine-tune of SD1.5
that is 3.4 GB of fp32 gradients at the peak, plus the temporaries of a multi-tensor
(``foreach``) update, which are as large again. :class:`PerTensorOptimizer` gives each trained
tensor an optimizer of its own (the same class and settings, one parameter each):

- ``fused``: each tensor's step runs in its post-accumulate-grad hook, the moment backward has
  finished its gradient, and the gradient is freed at once, so at most a few gradients are
  alive at any time (the "fused backward pass" of kohya's sd-scripts and of PyTorch's
  tutorial). With gradient accumulation the hooks step only in the last micro-step's
  backward (:attr:`armed`); earlier ones accumulate as usual.
- otherwise ``step()`` steps the tensors one after another, which is the same arithmetic as
  the multi-tensor step without its temporaries.
- ``stochastic_rounding``: bf16 trained tensors (``full_bf16``) are updated in fp32 (each one
  on its own, in a temporary copy) and written back rounded up or down at random, in
  proportion to the distance to each neighbour, so updates smaller than bf16's spacing are
  kept on average instead of lost. The optimizer's states stay fp32 (or 8-bit/factored,
  whatever the optimizer keeps).

Gradient clipping by the norm of all gradients needs them all at once; with ``fused`` the
``max_grad_norm`` of the config clips each tensor's gradient by its own norm (logged).

Data-parallel training (several processes): DistributedDataParallel averages gradients in
buckets after backward has produced them, too late for a step inside backward. So a fused run
is not wrapped in it (see the loop); each tensor's hook averages that tensor's gradient over
the processes itself (one all-reduce per tensor, :attr:`world`) before it steps, and every
process then applies the same update to the same weights.

The outer object is a real ``torch.optim.Optimizer`` whose ``param_groups`` are the ones the
learning-rate schedule changes; each inner step reads its group's current values.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

_STEP_KEYS = ("lr", "weight_decay")


def stochastic_round_to_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """fp32 -> bf16, rounding each value to one of its two bf16 neighbours with probability
    proportional to closeness (unbiased: the expected result is ``x``)."""
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = (bits + noise) & -65536  # clear the 16 low bits after adding a uniform carry
    return rounded.view(torch.float32).to(torch.bfloat16)  # exact: the low bits are zero


class PerTensorOptimizer(torch.optim.Optimizer):
    """One inner optimizer per trained tensor (see the module's text)."""

    def __init__(self, groups: list[dict], make: Callable[[list[dict]], torch.optim.Optimizer],
                 fused: bool = False, max_grad_norm: float = 0.0, stochastic_rounding: bool = False,
                 seed: int = 0):
        super().__init__(groups, {})
        self.fused = fused
        self.max_grad_norm = max_grad_norm
        self.stochastic_rounding = stochastic_rounding
        self.armed = True
        self._order: list[torch.nn.Parameter] = []
        self._inner: dict[torch.nn.Parameter, tuple[torch.optim.Optimizer, dict, torch.nn.Parameter | None]] = {}
        self._hooks = []
        self._generator = None
        self.world = _world_size() if fused else 1  # processes the hooks average each gradient over
        for group in self.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                proxy = None
                if stochastic_rounding and p.dtype == torch.bfloat16:
                    # the inner optimizer's key: an fp32 parameter whose data is the tensor's fp32
                    # copy during its step and empty otherwise
                    proxy = torch.nn.Parameter(torch.empty(0, device=p.device), requires_grad=True)
                inner = make([{**settings, "params": [proxy if proxy is not None else p]}])
                self._inner[p] = (inner, group, proxy)
                self._order.append(p)
                if fused:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._on_gradient))
        if stochastic_rounding:
            device = self._order[0].device if self._order else torch.device("cpu")
            if device.type != "meta":  # the simulation rounds nothing
                self._generator = torch.Generator(device).manual_seed(seed)

    # -- stepping -------------------------------------------------------------------------
    def _on_gradient(self, p: torch.nn.Parameter) -> None:
        if self.armed:
            self.step_tensor(p)

    @torch.no_grad()
    def step_tensor(self, p: torch.nn.Parameter) -> None:
        """Step ``p`` with its gradient and free the gradient."""
        if p.grad is None:
            return
        inner, group, proxy = self._inner[p]
        if self.world > 1:  # data-parallel: the mean gradient of every process, before the step
            import torch.distributed as dist

            dist.all_reduce(p.grad)
            p.grad.div_(self.world)
        for g in inner.param_groups:  # the schedule changes the outer groups
            for k in _STEP_KEYS:
                if k in group:
                    g[k] = group[k]
        if self.fused and self.max_grad_norm > 0:
            norm = p.grad.float().norm()
            p.grad.mul_((self.max_grad_norm / (norm + 1e-6)).clamp(max=1.0))
        if proxy is None:
            inner.step()
        else:
            proxy.data = p.detach().float()
            proxy.grad = p.grad.float()
            inner.step()
            p.copy_(stochastic_round_to_bf16(proxy.data, self._generator))
            proxy.grad = None
            proxy.data = torch.empty(0, device=p.device)
        p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        """Fused: nothing left to do (each tensor stepped in backward). Otherwise every tensor."""
        loss = closure() if closure is not None else None
        if not self.fused:
            for p in self._order:
                self.step_tensor(p)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._order:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The inner states, the groups, and the rounding generator's state (so a resumed
        ``full_bf16`` run draws the same roundings as the uninterrupted one)."""
        state = {"per_tensor": [self._inner[p][0].state_dict() for p in self._order],
                 "groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]}
        if self._generator is not None:
            state["rounding_generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        inner = state.get("per_tensor")
        if inner is None or len(inner) != len(self._order):
            raise ValueError(f"optimizer state: expected {len(self._order)} per-tensor states (fused_backward / "
                             f"full_bf16 run), got {'a plain optimizer state' if inner is None else len(inner)}")
        for p, s in zip(self._order, inner):
            self._inner[p][0].load_state_dict(s)
        for g, saved in zip(self.param_groups, state.get("groups", [])):
            g.update(saved)
        if self._generator is not None:
            saved = state.get("rounding_generator")
            if saved is None:
                raise ValueError("optimizer state: a full_bf16 run's checkpoint must hold the stochastic-rounding "
                                 "generator's state ('rounding_generator'); this one was written without it")
            self._generator.set_state(saved.cpu() if hasattr(saved, "cpu") else saved)

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def per_tensor_of(optimizer) -> PerTensorOptimizer | None:
    """The :class:`PerTensorOptimizer` behind ``optimizer`` (accelerate wraps it), or None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, PerTensorOptimizer) else None
