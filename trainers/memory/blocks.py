"""Per-block memory switches over the family's repeated blocks (``Family.repeated_blocks``):
selective gradient checkpointing and block streaming.

**Selective checkpointing** (``checkpoint_blocks: N``) recomputes only the first N blocks in
the family's order (the ones with the largest activations first), so a budget that needs a
little less memory pays for a little recomputation instead of all of it.

**Block streaming** (``stream_blocks: N``) keeps the frozen linear and convolution weights of
the last N blocks in pinned CPU memory and brings each block's weights to the device just
before it runs: in the forward pass one block ahead, and again in the backward pass (in
reverse order), each time on a side stream while the previous block computes. The rules
that make this safe on a GPU, where a kernel may still read memory after Python has moved on:

- a fetched weight is allocated and copied on the side stream, then ``record_stream`` marks it
  as used by the compute stream, so the allocator does not hand its memory to anyone until the
  kernels queued on the compute stream before it was released have run;
- the compute stream waits on the copy's event before the block runs;
- a streamed layer's autograd node keeps no reference to the weight (a custom function reads
  the module's weight again in backward, after the gradient hook on the block's output has fetched it):
  a saved weight would keep every block's weights alive until backward, which is the memory
  streaming exists to save;
- an evicted weight is an empty tensor, so any use of a weight that was not fetched fails
  loudly instead of reading stale memory.

Only frozen weights are streamed (LoRA adapters and norms stay on the device), so streaming is
for LoRA training, on an unquantized base or an fp8 one (``quantize_base: fp8``): an fp8 layer
streams its 8-bit weight and its row scales, half the bytes of bf16 in host memory and on each
transfer, and its own autograd function already reads the weight again in backward (it saves
the layer's weight tensor itself, whose storage the streamer swaps, never a dequantized copy).
bitsandbytes' int8/nf4 layers are not streamed.
"""
from __future__ import annotations

import functools
import logging
import types

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

from .quantize import Fp8Linear
from .techniques import checkpoint_function

log = logging.getLogger(__name__)


# --- selective checkpointing -----------------------------------------------------------------

def checkpoint_first(blocks: list[torch.nn.Module], n: int, recompute_context=None) -> list[torch.nn.Module]:
    """Recompute the first ``n`` of ``blocks`` in backward (``recompute_context``: see
    ``techniques.checkpoint_function``). Returns the wrapped blocks."""
    run = checkpoint_function(recompute_context)
    wrapped = []
    for block in blocks[:n]:
        if getattr(block, "_persona_checkpointed", False):
            continue
        original = block.forward

        @functools.wraps(original)
        def forward(*args, _original=original, **kwargs):
            if torch.is_grad_enabled():
                return run(_original, *args, **kwargs)
            return _original(*args, **kwargs)

        block.forward = forward
        block._persona_checkpointed = True
        wrapped.append(block)
    return wrapped


# --- block streaming -------------------------------------------------------------------------

class _StreamedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module):
        ctx.module, ctx.x_dtype = module, x.dtype
        return F.linear(x, module.weight, module.bias)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.module.weight
        return (grad @ w.to(grad.dtype)).to(ctx.x_dtype), None


class _StreamedConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, module):
        ctx.module, ctx.x_dtype, ctx.shape = module, x.dtype, x.shape
        if module.padding_mode != "zeros":
            return module._conv_forward(x, module.weight, module.bias)
        return F.conv2d(x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)

    @staticmethod
    def backward(ctx, grad):
        m = ctx.module
        if m.padding_mode != "zeros":
            raise NotImplementedError(f"stream_blocks: padding_mode '{m.padding_mode}' is not streamed")
        w = m.weight.to(grad.dtype)
        gx = torch.nn.grad.conv2d_input(ctx.shape, w, grad, m.stride, m.padding, m.dilation, m.groups)
        return gx.to(ctx.x_dtype), None


def _streamed_forward(self, x):
    """A streamed layer's forward: through the custom function when autograd records, else
    the layer's own forward (no graph keeps the weight)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return (_StreamedConv2d if isinstance(self, torch.nn.Conv2d) else _StreamedLinear).apply(x, self)
    return type(self).forward(self, x)


def _frozen_layers(block: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in block.modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d, Fp8Linear)
            and not m.weight.requires_grad and (m.bias is None or not m.bias.requires_grad)]


def _streamed_tensors(layer: torch.nn.Module) -> list[torch.Tensor]:
    """What a layer streams: its weight and bias, and an fp8 layer's row scales."""
    scale = layer.scale if isinstance(layer, Fp8Linear) else None
    return [t for t in (layer.weight, scale, layer.bias) if t is not None]


class BlockStreamer:
    """Streams the frozen weights of ``blocks`` (see the module's text). ``device`` is where
    they compute; on ``meta`` (the planner's simulation) the host copies are the meta tensors
    and a fetch allocates, so the predicted peak holds one or two streamed blocks at a time."""

    def __init__(self, blocks: list[torch.nn.Module], device: torch.device, model: torch.nn.Module | None = None):
        self.device = torch.device(device)
        self.blocks = list(blocks)
        cuda = self.device.type == "cuda"
        self._side = torch.cuda.Stream(self.device) if cuda else None
        self._layers: list[list[torch.nn.Module]] = []
        self._host: dict[int, torch.Tensor] = {}  # id(tensor) -> its values in host memory
        self._params: list[list[torch.Tensor]] = []  # per block: the weights, biases (and fp8 scales) streamed
        self._ready: dict[int, torch.cuda.Event | None] = {}  # fetched blocks -> copy event
        self._in_backward: set[int] = set()
        self._order: list[int] = []
        self._recording = True
        self._end_queued = False
        self._handles = []
        self.fetches = 0
        for i, block in enumerate(self.blocks):
            layers = _frozen_layers(block)
            params = [t for m in layers for t in _streamed_tensors(m)]
            for p in params:
                host = p.data  # not p.detach(): no dispatched op, so a memory meter does not count it
                if self.device.type != "meta":
                    host = host.to("cpu", copy=True)
                    if cuda:
                        host = host.pin_memory()
                self._host[id(p)] = host
                p.data = self._placeholder(p)
            for m in layers:
                if not isinstance(m, Fp8Linear):  # an fp8 layer's own function keeps no copy of the weight
                    m.forward = types.MethodType(_streamed_forward, m)
            self._layers.append(layers)
            self._params.append(params)
            self._handles += [
                block.register_forward_pre_hook(functools.partial(self._before_forward, i)),
                block.register_forward_hook(functools.partial(self._after_forward, i)),
            ]
        if model is not None:  # a new forward pass starts the recorded order again
            self._handles.append(model.register_forward_pre_hook(lambda *_: self._new_pass()))
        if self._params:
            gb = sum(t.numel() * t.element_size() for t in self._host.values()) / 2 ** 30
            log.info("stream_blocks: %d blocks, %.2f GB of frozen weights in %s memory, streamed to %s",
                     len(self.blocks), gb, "pinned CPU" if cuda else "host", self.device)

    def host_tensors(self) -> list[torch.Tensor]:
        return list(self._host.values())

    def _placeholder(self, p: torch.Tensor) -> torch.Tensor:
        return torch.empty(0, dtype=p.dtype, device=self.device)

    # -- moving weights ---------------------------------------------------------------------
    def fetch(self, i: int) -> None:
        """Start bringing block ``i``'s weights to the device (no-op when already there)."""
        if i in self._ready or i < 0 or i >= len(self.blocks):
            return
        self.fetches += 1
        if self._side is not None:
            compute = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self._side):
                for p in self._params[i]:
                    t = torch.empty_like(self._host[id(p)], device=self.device)
                    t.copy_(self._host[id(p)], non_blocking=True)
                    t.record_stream(compute)  # freed only after the compute stream's use
                    p.data = t
                event = torch.cuda.Event()
                event.record(self._side)
            self._ready[i] = event
        else:
            for p in self._params[i]:
                host = self._host[id(p)]
                p.data = torch.empty_like(host, device=self.device).copy_(host) if self.device.type != "meta" \
                    else torch.empty_like(host)
            self._ready[i] = None

    def _wait(self, i: int) -> None:
        self.fetch(i)
        event = self._ready[i]
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def evict(self, i: int) -> None:
        if i not in self._ready:
            return
        for p in self._params[i]:
            p.data = self._placeholder(p)
        del self._ready[i]

    # -- hooks ------------------------------------------------------------------------------
    def _new_pass(self) -> None:
        self._finish_backward()

    def _end_of_backward(self) -> None:
        self._end_queued = False
        self._finish_backward()

    def _finish_backward(self, keep: int | None = None) -> None:
        for j in list(self._in_backward):
            if j != keep:
                self._in_backward.discard(j)
                self.evict(j)

    def _neighbour(self, i: int, step: int) -> int | None:
        if i not in self._order:
            return None
        k = self._order.index(i) + step
        return self._order[k] if 0 <= k < len(self._order) else None

    def _before_forward(self, i, module, args):
        if self._recording and i not in self._order:
            self._order.append(i)
        self._wait(i)
        if i not in self._in_backward:  # a recomputation inside backward prefetches nothing
            nxt = self._neighbour(i, +1)
            if nxt is not None:
                self.fetch(nxt)

    def _after_forward(self, i, module, args, output):
        if torch.is_grad_enabled():
            # a gradient hook on each output: it runs once the output's gradient is complete,
            # before any of the block's backward (module backward hooks would also wrap the
            # inputs in extra autograd nodes, which changes the order gradients are summed in)
            for t in tree_flatten(output)[0]:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    t.register_hook(functools.partial(self._before_backward, i))
        if i not in self._in_backward:
            self.evict(i)

    def _before_backward(self, i, grad):
        # The blocks are a chain (every later block depends on every earlier one): when block
        # i's backward starts, every block after it has finished its own, so their weights go.
        self._recording = False
        if not self._end_queued:  # the last block's weights go when this backward pass ends
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self._end_queued = True
        self._finish_backward(keep=i)
        self._in_backward.add(i)
        self._wait(i)
        prev = self._neighbour(i, -1)
        if prev is not None:
            self.fetch(prev)
        return None

    def close(self) -> None:
        """Remove the hooks; the streamed weights stay in host memory (the trained adapters
        are what a LoRA run exports)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._finish_backward()
        for i, params in enumerate(self._params):
            for p in params:
                p.data = self._host[id(p)]
            for m in self._layers[i]:
                m.__dict__.pop("forward", None)
        self._ready.clear()


def stream_last(blocks: list[torch.nn.Module], n: int, device, model=None) -> BlockStreamer | None:
    """Stream the last ``n`` of ``blocks``; None when ``n`` is 0."""
    if n <= 0:
        return None
    if n > len(blocks):
        raise ValueError(f"stream_blocks: {n} is more than the denoiser's {len(blocks)} repeated blocks")
    return BlockStreamer(blocks[len(blocks) - n:], device, model)
