"""Measuring training memory without a GPU: a live-tensor meter, and a training step run on
the ``meta`` device (shapes, no data) to predict the peak of a plan.

:class:`LiveTensorMeter` is a dispatch mode that counts the bytes of every tensor storage
alive (parameters, activations saved for backward, gradients, optimizer states, temporaries)
and keeps the peak: what ``torch.cuda.max_memory_allocated`` reports on a GPU, minus the
allocator's rounding. On the CPU it is the benchmark's measurement; on ``meta`` tensors it
is the planner's prediction, at no memory and little time even for FLUX's 12B parameters.
An operator that runs again with the same metadata is replayed from memory rather than by its
meta kernel (:class:`_MetaOutputs`): a simulated SDXL step takes about half the time.
"""
from __future__ import annotations

import statistics
import time
import weakref
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from . import techniques as memory
from .per_tensor import per_tensor_of
from ...core.transfer import to_device
from ...models.families import get_family
from ..loop.ema import EMA
from ..loop.step import forward_backward, make_trainable


def _describe(value):
    """An operator argument as a key: a plain meta tensor by its metadata, a list or tuple item
    by item, anything else by its (hashable) value. TypeError: not replayable (a tensor on a
    real device, a tensor subclass, an unhashable value). Called for every operator a
    simulation runs, so the common kinds are tested first."""
    kind = type(value)
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        if not value.is_meta:
            raise TypeError
        return ("T", value.shape, value.stride(), value.dtype, value.storage_offset())
    if kind is tuple or kind is list or isinstance(value, (list, tuple)):
        return tuple([_describe(v) for v in value])
    if isinstance(value, torch.Tensor):  # a subclass: its own rules
        raise TypeError
    hash(value)
    return value


class _MetaOutputs:
    """What an operator does on ``meta`` tensors, remembered by its arguments' metadata
    (shapes, strides, dtypes) and values: many of a step's operators run the same shapes again
    (every block of a level, every simulated plan), and PyTorch computes many meta results in
    Python (its reference implementations), at 0.1-0.5 ms each. Two kinds qualify:

    - functional operators that return new storage: replayed as fresh tensors with the
      recorded metadata (storage size included);
    - in-place operators that write only their first argument and change none of its
      metadata: replayed as that argument (a meta tensor holds no values to write).

    Views, ``out=`` forms, in-place views and anything with a tensor subclass run as they are."""

    LIMIT = 500_000  # remembered results (a real SDXL step has about 5,000 distinct ones)

    def __init__(self):
        self._known: dict = {}
        self._kind: dict = {}  # operator -> "fresh", "inplace" or None
        self.hits = self.misses = 0
        self.enabled = True

    def _kind_of(self, func) -> str | None:
        if func in self._kind:
            return self._kind[func]
        schema, kind = func._schema, None
        tensors = ("Tensor", "Tensor?", "Tensor[]")
        writes = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        if not schema.is_mutable:
            if schema.returns and all(r.alias_info is None and str(r.type) in tensors for r in schema.returns):
                kind = "fresh"
        elif (len(writes) == 1 and writes[0] is schema.arguments[0] and not writes[0].kwarg_only
              and torch.Tag.inplace_view not in func.tags and "resize" not in schema.name and "set_" not in schema.name
              and (not schema.returns or (len(schema.returns) == 1 and schema.returns[0].alias_info is not None))):
            kind = "inplace"
        self._kind[func] = kind
        return kind

    def __call__(self, func, args, kwargs):
        kind = self._kind_of(func) if self.enabled else None
        if kind is None:
            return func(*args, **kwargs)
        try:
            key = (func, _describe(args), _describe(tuple(sorted(kwargs.items()))) if kwargs else (),
                   torch.get_default_dtype())  # what factory operators make without a dtype
        except TypeError:
            return func(*args, **kwargs)
        recorded = self._known.get(key)
        if recorded is None:
            self.misses += 1
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            out = func(*args, **kwargs)
            if kind == "inplace":
                self._known[key] = out is not None
                return out
            flat = out if isinstance(out, (tuple, list)) else (out,)
            flat = [o for item in flat for o in (item if isinstance(item, (tuple, list)) else (item,))]
            if all(o is None or self._replayable(o) for o in flat):
                self._known[key] = (self._shape_of(out),)
            return out
        self.hits += 1
        if kind == "inplace":
            return args[0] if recorded else None
        return self._make(recorded[0])

    @staticmethod
    def _shape_of(out):
        if isinstance(out, (tuple, list)):
            return (type(out), tuple(_MetaOutputs._shape_of(o) for o in out))
        return None if out is None else (tuple(out.shape), out.stride(), out.dtype)

    @staticmethod
    def _make(recorded):
        if recorded is None:
            return None
        if isinstance(recorded[0], type):
            return recorded[0](_MetaOutputs._make(r) for r in recorded[1])
        return torch.empty_strided(recorded[0], recorded[1], dtype=recorded[2], device="meta")

    @staticmethod
    def _replayable(o) -> bool:
        """A meta tensor that :func:`torch.empty_strided` recreates, storage size and all."""
        if type(o) is not torch.Tensor or o.device.type != "meta" or o.storage_offset() != 0:
            return False
        again = torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device="meta")
        return again.untyped_storage().nbytes() == o.untyped_storage().nbytes()


_META_OUTPUTS = _MetaOutputs()


_POLL: ContextVar[Callable[[], None] | None] = ContextVar("persona_simulation_poll", default=None)
POLL_EVERY = 128  # operations between two calls of the poll


@contextmanager
def polled(poll: Callable[[], None]):
    """Simulations started inside the block call ``poll`` every :data:`POLL_EVERY` operations
    (a large model's simulation takes tens of seconds): it may raise to stop the simulation."""
    token = _POLL.set(poll)
    try:
        yield
    finally:
        _POLL.reset(token)


class LiveTensorMeter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._poll = _POLL.get()
        self._ops = 0

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._sizes:
            return
        n = storage.nbytes()
        self._sizes[key] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def forget(self, tensor: torch.Tensor) -> None:
        """Stop counting ``tensor``'s storage (it lives in another memory)."""
        self._free(id(tensor.untyped_storage()))

    def add_module(self, module: torch.nn.Module | None) -> None:
        if module is None:
            return
        for t in [*module.parameters(), *module.buffers()]:
            self.add(t)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._ops += 1
        if self._poll is not None and self._ops % POLL_EVERY == 0:
            self._poll()
        out = _META_OUTPUTS(func, args, kwargs or {})
        if type(out) is torch.Tensor:  # most operators: one tensor
            self.add(out)
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


class _MemoryEfficientAttention(torch.autograd.Function):
    """SDPA on ``meta`` tensors with the memory of a fused kernel (output and log-sum-exp
    kept, no attention matrix); meta SDPA would otherwise take the math path."""

    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class FusedAttentionOnMeta:
    """While active, ``F.scaled_dot_product_attention`` on meta tensors has the memory of a
    fused kernel (without a mask, or with a key-padding mask). A module-attribute swap rather than a function mode, because gradient
    checkpointing recomputes inside the autograd engine, where function modes do not reach;
    tensors on real devices pass straight through."""

    def __enter__(self):
        self._original = F.scaled_dot_product_attention
        original = self._original

        def sdpa(*args, **kwargs):
            names = ("query", "key", "value")
            qkv = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]):] if n in kwargs]
            rest = {k: v for k, v in kwargs.items() if k not in names}
            mask = rest.get("attn_mask")
            # a key-padding mask (one row for every query, Qwen-Image's captions) is what CUDA's
            # memory-efficient kernel takes as a broadcast bias, without an attention matrix
            padding_only = mask is None or (mask.dim() == 4 and mask.shape[-2] == 1)
            if len(qkv) == 3 and qkv[0].device.type == "meta" and padding_only \
                    and not rest.get("is_causal") and not rest.get("dropout_p") and len(args) <= 3:
                q, k, v = qkv
                if k.shape[1] != q.shape[1]:  # grouped heads: expand as the math path does
                    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
                    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
                return _MemoryEfficientAttention.apply(q, k, v)
            return original(*args, **kwargs)

        F.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        F.scaled_dot_product_attention = self._original
        return False


def _simulated_quantization(cfg):
    """bitsandbytes layers cannot live on ``meta``: simulate nf4/int8 storage with float8
    storage scaled to their size."""
    return cfg.quantize_base in ("nf4", "int8")


class _PackedLinear(torch.nn.Linear):
    """Meta-only stand-in of a bitsandbytes layer: ``bits`` per weight, dequantized per call."""

    def __init__(self, source: torch.nn.Linear, bits: int):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = source.in_features, source.out_features
        n = source.in_features * source.out_features * bits // 8
        self.register_buffer("weight", torch.empty(n, dtype=torch.uint8, device="meta"))
        self.register_buffer("absmax", torch.empty(max(1, source.weight.numel() // 64), device="meta"))
        self.bias = source.bias

    def forward(self, x):
        w = torch.empty(self.out_features, self.in_features, dtype=x.dtype, device=x.device)
        return F.linear(x, w, self.bias)


def _pack_linears(module, bits):
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            setattr(module, name, _PackedLinear(child, bits))
        else:
            _pack_linears(child, bits)


class MetaAutocast(TorchFunctionMode):
    """Autocast's memory on ``meta`` tensors, where ``torch.autocast`` does not run: the inputs
    of matrix products and convolutions are cast to ``dtype``, each trained fp32 weight once per
    forward (autocast's cast cache; the copies stay alive while backward needs them).
    Recomputation inside backward (gradient checkpointing) runs uncast, so a checkpointed half-
    precision prediction errs high, never low."""

    _LOW = {F.linear, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm, torch.mm,
            torch.Tensor.__matmul__, torch.Tensor.matmul, torch.einsum}

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, torch.Tensor] = {}

    def __enter__(self):
        self._cache = {}
        return super().__enter__()

    def __exit__(self, *exc):
        self._cache = {}
        return super().__exit__(*exc)

    def _cast(self, t):
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.float32):
            return t
        if t.is_leaf and t.requires_grad:
            if id(t) not in self._cache:
                self._cache[id(t)] = t.to(self.dtype)
            return self._cache[id(t)]
        return t.to(self.dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._LOW:
            if kwargs or any(isinstance(a, (list, tuple, dict)) for a in args):
                args, kwargs = tree_map(self._cast, (args, kwargs))
            else:  # the usual call, flat positional arguments: without the tree walk
                args = tuple([self._cast(a) for a in args])
        return func(*args, **kwargs)


class _Meta8bitAdamW(torch.optim.Optimizer):
    """bitsandbytes' 8-bit AdamW on ``meta``: two one-byte states per weight, made at the first
    step as bitsandbytes makes them (bitsandbytes layers and optimizers cannot live on meta)."""

    def __init__(self, groups, lr):
        super().__init__(groups, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if "state" not in self.state[p]:
                    self.state[p]["state"] = torch.empty(2 * p.numel(), dtype=torch.uint8, device=p.device)
                p.add_(p.grad, alpha=-group["lr"])


def _meta_optimizer(cfg):
    """What a plain optimizer keeps on a GPU, on ``meta``: AdamW in its multi-tensor (foreach)
    form, as PyTorch picks it for CUDA tensors (its temporaries are as large as all the trained
    weights at once; on meta PyTorch would pick the one-tensor form), 8-bit AdamW's states."""
    def make(groups):
        if cfg.optimizer == "adamw8bit":
            return _Meta8bitAdamW(groups, cfg.learning_rate)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, foreach=True)
        return memory.make_optimizer(groups, cfg.optimizer, cfg.weight_decay)
    return make


def _prime_optimizer(optimizer, groups, cfg) -> None:
    """The optimizer's states as a first step leaves them, through that step's own peak: every
    gradient present at once for a plain step, one at a time for a fused backward pass."""
    from .per_tensor import per_tensor_of

    params = [p for g in groups for p in g["params"]]
    fused = per_tensor_of(optimizer)
    if fused is not None and fused.fused:
        for p in params:
            p.grad = torch.zeros_like(p)
            fused.step_tensor(p)
        return
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=cfg.grad_set_to_none)


def run_steps(comps, cfg, device, steps: int = 2, meter: LiveTensorMeter | None = None,
              seed: int = 0, prime: bool = False, fused_attention: bool = True, warmup: int = 1,
              validation: bool = False) -> dict:
    """Train ``steps`` optimizer steps on random latents and zero conditioning with the memory
    switches of ``cfg``, through the loop's own setup and step functions. Returns peak bytes
    (the meter's, or CUDA's allocator peak; CUDA's reserved peak too), the median seconds per
    step after ``warmup`` steps, those steps' times (on CUDA between events recorded at the
    step boundaries: the host never waits inside the steps), the warm-up steps' seconds (what
    compilation costs shows there), and every step's loss (read from the device once, after
    the last step), and the number of parameters the optimizer trains (``trained``)."""
    device = torch.device(device)
    fam = get_family(comps.family)
    dtype = memory.weight_dtype(cfg.mixed_precision, device)
    meta = device.type == "meta"
    meter_ctx = meter if meter is not None else nullcontext()
    attention_ctx = FusedAttentionOnMeta() if meta and fused_attention else nullcontext()
    resident = [comps.denoiser]
    if cfg.cache_latents == "off" or cfg.identity_loss_weight > 0:
        resident.append(comps.vae)
    encode = not cfg.caches_captions
    if encode:
        resident += comps.text_encoders
    micro = cfg.batch_size * (2 if cfg.prior_preservation else 1)
    gen = torch.Generator("cpu").manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    with meter_ctx, attention_ctx:
        if meta and _simulated_quantization(cfg):
            memory.freeze(comps.denoiser)
            _pack_linears(comps.denoiser, 4 if cfg.quantize_base == "nf4" else 8)
            cfg = cfg.model_copy(update={"quantize_base": "off"})
        memory.place_frozen(resident[1:], device, dtype)
        half_meta = meta and dtype != torch.float32
        groups = make_trainable(comps, cfg, device, dtype,
                                (lambda: MetaAutocast(dtype)) if half_meta else None)
        trained = sum(p.numel() for g in groups for p in g["params"])
        ema = None
        if cfg.ema and not cfg.ema_on_cpu:  # the fp32 shadow of every trained tensor
            ema = EMA({str(i): p for i, p in enumerate(p for g in groups for p in g["params"])}, cfg.ema_decay)
        if meter is not None:
            for m in resident:
                meter.add_module(m)
            streamer = getattr(comps.denoiser, "_persona_streamer", None)
            for t in (streamer.host_tensors() if streamer is not None else []):
                meter.forget(t)  # streamed weights live in CPU memory
            meter.reset_peak()  # the loop prepares (quantizes) the base before it reaches the GPU
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if meta:
            optimizer = memory.build_optimizer(groups, cfg, device, make=_meta_optimizer(cfg))
        else:
            optimizer = memory.build_optimizer(groups, cfg, device)
        if prime:  # one measured step then sees the states a second step would
            _prime_optimizer(optimizer, groups, cfg)
            if ema is not None:
                ema.update(1)
        comps.denoiser.train()
        if dtype == torch.float32:
            autocast = nullcontext()
        elif meta:
            autocast = MetaAutocast(dtype)
        else:
            autocast = torch.autocast(device.type, dtype=dtype)
        times = []
        loss = None
        step_losses = []
        shape = fam.latent_shape(comps, cfg.resolution)
        # CUDA: steps timed by events at their boundaries, on the GPU's clock, so the host
        # queues each step while the GPU runs the one before, as in training
        marks = [_timing_event()] if device.type == "cuda" else []
        per_tensor = per_tensor_of(optimizer)
        for _ in range(steps):
            t0 = time.perf_counter()
            for m in range(cfg.gradient_accumulation):
                if per_tensor is not None:  # fused backward: earlier micro-steps keep their gradients, as in the loop
                    per_tensor.armed = m == cfg.gradient_accumulation - 1
                latents = to_device(torch.randn((micro, *shape), generator=gen), device)
                cond = fam.dummy_condition(comps, micro, device, dtype, cfg)
                extra = None
                with autocast:
                    if comps.vae in resident:
                        with torch.no_grad():
                            pixels = torch.zeros(micro, 3, cfg.resolution, cfg.resolution, device=device, dtype=dtype)
                            fam.encode_pixels(comps.vae, pixels)
                    if encode:
                        ctx = torch.enable_grad() if cfg.train_text_encoder else torch.no_grad()
                        with ctx:
                            ids = torch.zeros(micro, 77, dtype=torch.long, device=device)
                            extra = sum(te(ids)[0].float().mean() for te in comps.text_encoders)
                add = None
                if extra is not None and cfg.train_text_encoder:  # the encoders' graph joins the loss
                    add = lambda p, loss, parts, e=extra: (loss + 0 * e, parts)  # noqa: E731
                loss, _ = forward_backward(comps, comps.denoiser, latents, cond, gen, cfg, dtype, autocast,
                                           cfg.gradient_accumulation, add)
                del latents, cond, extra
            if not meta:
                step_losses.append(loss)
            if not (prime and meta):  # primed: that step's peak is already counted
                optimizer.step()
                optimizer.zero_grad(set_to_none=cfg.grad_set_to_none)
                if ema is not None:
                    ema.update(1)
            if marks:
                marks.append(_timing_event())
            else:
                times.append(time.perf_counter() - t0)
        validation_peak = None
        if validation and meter is not None:  # what training keeps (weights, optimizer states) is still alive
            step_peak = meter.peak
            validation_peak = _sampling_peak(comps, cfg, fam, device, dtype, meter, resident, autocast, shape)
            meter.peak = step_peak
    if marks:
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
    if meter is not None:
        peak = meter.peak
    elif device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = 0
    later = times[warmup:] or times
    reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    losses = [float(x) for x in torch.stack(step_losses).cpu()] if steps and not meta else []  # the one host sync
    return {"peak_bytes": int(peak), "validation_peak_bytes": validation_peak, "trained": trained,
            "reserved_bytes": reserved, "seconds_per_step": statistics.median(later),
            "step_seconds": later, "warmup_seconds": sum(times[:warmup]) if len(times) > warmup else 0.0,
            "steps": steps, "loss": losses[-1] if losses else None, "losses": losses}


def _sampling_peak(comps, cfg, fam, device, dtype, meter: LiveTensorMeter, resident: list, autocast,
                   shape: tuple) -> int:
    """The meter's peak while validation samples (trainers/loop/validation.py), beside what
    training keeps: the VAE and the text encoders the family keeps, placed and cast; one
    prediction at a classifier-free-guidance batch of 2 and one VAE decode, without gradients."""
    keep = comps.text_encoders if fam.keeps_text_encoders else []
    moved = [m for m in (comps.vae, *keep) if m is not None and m not in resident]
    memory.place_frozen(moved, device, dtype)
    for m in moved:
        meter.add_module(m)
    meter.reset_peak()
    was_training = comps.denoiser.training
    comps.denoiser.eval()
    try:
        with autocast:
            sample_once(comps, cfg, fam, device, dtype, shape)
    finally:
        comps.denoiser.train(was_training)
    return meter.peak


def sample_once(comps, cfg, fam, device, dtype, shape: tuple) -> None:
    """What sampling holds at its peak, without gradients: one prediction at a
    classifier-free-guidance batch of 2, then one VAE decode (validation sampling and the
    class-image phase, measured by the caller's meter)."""
    with torch.no_grad():
        latents = to_device(torch.zeros((2, *shape)), device)
        cond = fam.dummy_condition(comps, 2, device, dtype, cfg)
        fam.predict(comps, comps.denoiser, latents, cond, torch.Generator("cpu").manual_seed(0), cfg, dtype)
        del latents, cond
        fam.decode_latents(comps.vae, to_device(torch.zeros((1, *shape)), device).to(dtype))


def _timing_event():
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


_ARCHITECTURES: dict[tuple, object] = {}


def architecture(family: str, base_model: str | None = None, size: str = "real"):
    """The meta-device components of a model (built once per process; copy before changing)."""
    from ...models.architectures import meta_components

    key = (family, str(base_model), size)
    if key not in _ARCHITECTURES:
        _ARCHITECTURES[key] = meta_components(family, base_model, size)
    return _ARCHITECTURES[key]


def simulate(family: str, cfg, base_model: str | None = None, size: str = "real") -> dict:
    """Predicted peak bytes of training ``cfg`` on a GPU, from a meta-device run (one step
    after the optimizer's states are made as a step makes them, on a copy of the
    architecture), of validation sampling beside it (``validate_every``; else None), and the
    number of parameters the optimizer trains (the adapters, or the weights a full fine-tune
    trains; a frozen text encoder is none of them): ``{"peak_bytes", "validation_peak_bytes",
    "trainable"}``."""
    import copy

    # hosts may call this under inference mode / no_grad (ComfyUI runs nodes so): a training
    # step needs autograd
    with torch.inference_mode(False), torch.enable_grad():
        comps = copy.deepcopy(architecture(family, base_model, size))
        meter = LiveTensorMeter()
        out = run_steps(comps, cfg, "meta", steps=1, meter=meter, prime=True, validation=cfg.validate_every > 0)
        return {"peak_bytes": out["peak_bytes"], "validation_peak_bytes": out["validation_peak_bytes"],
                "trainable": out["trained"]}


def simulate_peak(family: str, cfg, base_model: str | None = None, size: str = "real") -> int:
    """Predicted peak bytes of training ``cfg`` on a GPU (see :func:`simulate`)."""
    return simulate(family, cfg, base_model, size)["peak_bytes"]
