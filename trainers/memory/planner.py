"""The memory planner: the switches that fit a VRAM budget at the best predicted speed.

**What is searched.** A candidate sets precision, full-precision or bf16 trained weights
(``full_bf16``, full fine-tunes), the optimizer, the quantized base (LoRA), the micro-batch
(accumulation keeps the effective batch), the fused backward pass, how many of the
denoiser's repeated blocks gradient checkpointing recomputes (none, the first N, all) and,
as a last resort for LoRA on an unquantized or fp8 base (:data:`STREAMABLE`), how many blocks
are streamed from CPU memory (an fp8 base's blocks are half as large, so fewer are streamed).
The speed switches that cost no memory (``compile: blocks``, ``fused_optimizer``) are on in
every candidate wherever the target device runs them. The latent and
text-embedding caches are always on: they save memory and time.

**Predicted peak.** The training step run on the ``meta`` device through the loop's own
setup and step code, every live tensor counted (``simulate``), then calibrated for a CUDA
target (:data:`CALIBRATION`): measured peak allocated ~= 1.04 x simulated + 0.41 GiB, fitted
to the measurements on one H100 (torch 2.11) that the simulation had missed: SD1.5 LoRA @512
simulated 2.64 -> measured 3.15 GiB, SDXL LoRA @1024 5.72 -> 6.36 GiB; the constant is what
the simulation cannot see (cuBLAS/cuDNN workspaces, attention kernels' scratch), the slope the
allocator's rounding. The simulation now also counts the multi-tensor AdamW's temporaries
(as large as all trained weights), which a full DreamBooth's 16.50 GB measurement
contained and its 13.92 GB prediction did not. The `gpu` test lane checks every plan against
a measured peak (within -10 % / +5 % and never over its budget).

**Predicted speed** relative to fp32 with no technique: a product of factors (:data:`SPEED`),
those marked measured fitted to the H100 measurements, the others estimates until the
benchmark measures them (``bench/train_memory.py`` prints both).

**Search.** Candidates are taken fastest first; for each, the plan without checkpointing or
streaming is simulated, then (when it does not fit) all blocks checkpointed, and the fewest
checkpointed blocks that fit are found by interpolating between the two (the blocks with the
largest activations come first, so the interpolation is conservative) and confirmed by a
simulation; a LoRA that does not fit even so streams blocks on top, found the same way. Once
a candidate has needed streaming, the next ones are simulated all checkpointed first (their
peak without checkpointing is then simulated only when that fits). The search stops when no
remaining candidate can be faster than the best plan found, or after :data:`MAX_SIMULATIONS` simulations (then the faster of the best found
and the leanest plan is the plan: a bounded search, the same whatever peaks are memoised, since a
memoised peak counts as the simulation it spares; a plan
that streams every block then streams only as many as the budget needs); a
checkpointing plan is last compared with the leanest plan without checkpointing. A candidate that cannot fit even with everything checkpointed rules out every
candidate that keeps at least as much. Every predicted peak is memoised (per architecture,
config and switches, on disk), and so is every finished plan (per architecture, config,
budget and what the machine offers): a repeated plan costs a file read.

**System memory.** A run's plan (:func:`plan_for_config`) is last checked against the memory
its base needs to load: where the fastest plan reads an fp8 transformer file as bf16 and does
not load in what the system has available while an fp8 base, read as stored, would, the plan is
searched again among fp8 bases (:func:`within_host_memory`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ...core.config import ConfigError
from ...core.paths import cache_root

log = logging.getLogger(__name__)

ALLOCATOR_MARGIN = 1.05  # CPU targets (the tiny models of the tests): live tensors plus rounding
CALIBRATION = {"slope": 1.04, "offset_mb": 0.41 * 1024}  # CUDA targets, see the module's text
SPEED = {
    # measured (H100, torch 2.11, 971d0c8): bf16 and fp32 LoRA steps take about the same time at
    # batch 1 (SDXL 0.88x, SD1.5 faster); checkpointing every block 0.55x (SD1.5) - 0.62x (SDXL)
    "mixed_precision": {"no": 1.0, "bf16": 1.0, "fp16": 1.0},
    "checkpoint_all": 0.6,
    # estimates, until the gpu lane's benchmark measures them
    "quantize_base": {"off": 1.0, "fp8": 0.92, "nf4": 0.8, "int8": 0.6},
    "optimizer": {"adamw": 1.0, "adamw8bit": 0.99, "adafactor": 0.97},
    "fused_backward": {False: 1.0, True: 0.93},  # one optimizer call per tensor
    "full_bf16": {False: 1.0, True: 0.97},  # stochastic rounding per tensor
    "stream_all": 0.6,  # every block streamed: transfers the compute does not hide
    "compile": {"off": 1.0, "blocks": 1.3},
    "fused_optimizer": {False: 1.0, True: 1.03},
}
# What a budget keeps free (a CUDA target): the CUDA context with its modules and library
# handles, outside PyTorch's allocator (about 0.3-0.5 GiB on CUDA 12 with lazy loading; the
# allocated peaks the calibration fits do not see it), and the caching allocator's reserve over
# what is allocated (its 2 MiB / 20 MiB block rounding and fragmentation: the H100 rows of
# docs/benchmarks.md reserve 3-8 % above their allocated peak). A budget read from the free
# memory of a device already holds the context, so only the reserve is kept.
CONTEXT_MB = 512.0
RESERVE_FRACTION = 0.08
MICRO_BATCH_EXPONENT = 0.15  # per-sample speed ~ (micro / batch) ** 0.15
HEAVY = {"quantize_base": ["nf4", "int8", "fp8", "off"], "optimizer": ["adamw8bit", "adafactor", "adamw"]}
STREAMABLE = ("off", "fp8")  # bases whose blocks can be streamed (bitsandbytes' layers cannot)
VERSION = 5  # 5: "trainable" counts what the optimizer trains (it counted unfrozen text encoders too)
MAX_SIMULATIONS = 16  # distinct ones in a search, memoised or not


class PlanError(ConfigError):
    """Nothing fits the budget."""


@dataclass
class Plan:
    family: str
    method: str
    resolution: int
    batch_size: int
    budget_mb: float
    switches: dict
    predicted_peak_mb: float
    relative_speed: float
    tried: list[dict] = field(default_factory=list)
    blocks: int = 0  # the denoiser's repeated blocks
    usable_mb: float = 0.0  # the budget less the headroom (usable_budget): what every phase must fit
    caching: dict = field(default_factory=dict)  # the caching phase (caching.plan_caching)
    validation: bool = False  # predicted_peak_mb covers validation sampling too (validate_every)
    class_images: dict = field(default_factory=dict)  # prior preservation's class images (class_images.py)
    host_memory: str = ""  # why the plan's base is fp8: the system memory loading it takes (within_host_memory)

    def apply(self, cfg):
        from ..config import TrainConfig

        data = cfg.model_dump()
        data.update(self.switches)
        data["memory"] = "manual"
        return TrainConfig(**data)

    def describe(self) -> str:
        rows = [f"Memory plan for {self.family} {self.method} @ {self.resolution}px, batch {self.batch_size}, "
                f"budget {size_text(self.budget_mb)}",
                "| switch | value |", "| --- | --- |"]
        rows += [f"| {k} | {v} |" for k, v in self.switches.items()]
        if self.switches.get("gradient_checkpointing"):
            n = self.switches.get("checkpoint_blocks") or self.blocks
            rows.append(f"checkpointing recomputes {n} of the {self.blocks} repeated blocks")
        if self.switches.get("stream_blocks"):
            rows.append(f"{self.switches['stream_blocks']} of the {self.blocks} blocks are streamed from CPU memory")
        if self.switches.get("fused_backward"):
            rows.append("fused backward: max_grad_norm clips each tensor's gradient by its own norm")
        if self.usable_mb and self.usable_mb < self.budget_mb:
            rows.append(f"usable: {size_text(self.usable_mb)} of the budget (kept free: the CUDA context and the "
                        f"allocator's reserve)")
        if self.caching:
            on_cpu = self.caching.get("encode_on_cpu") or []
            rows.append(f"caching: the VAE {size_text(self.caching['vae_mb'])}, the text encoders "
                        f"{size_text(self.caching['text_encoders_mb'])}"
                        + (f"; on the CPU (beyond the budget): {', '.join(on_cpu)}" if on_cpu else ""))
        if self.class_images:
            c = self.class_images
            rows.append(f"class images: {size_text(c['peak_mb'])}"
                        + (f"; text encoders on the CPU: {', '.join(c['text_on_cpu'])}" if c["text_on_cpu"] else "")
                        + ("; the denoiser quantized to fp8 before it samples" if c["quantize"] != "off" else "")
                        + (f"; {c['stream_blocks']} blocks streamed while it samples" if c.get("stream_blocks") else ""))
        if self.host_memory:
            rows.append(self.host_memory)
        rows.append(f"predicted peak: {size_text(self.predicted_peak_mb)} (training step"
                    f"{' and validation sampling' if self.validation else ''}), "
                    f"{size_text(self.whole_run_peak_mb)} (whole run); predicted speed: "
                    f"{self.relative_speed:.2f}x of fp32 with no technique ({len(self.tried)} candidates simulated)")
        return "\n".join(rows)

    def summary(self) -> str:
        """The switches that differ from doing nothing, on one line (``k=v, ...``)."""
        return switches_text(self.switches) or "no memory technique needed"

    @property
    def whole_run_peak_mb(self) -> float:
        """The largest phase's predicted peak: the class images, the caching phase or the
        training step."""
        return max(self.predicted_peak_mb, float(self.caching.get("peak_mb", 0.0)),
                   float(self.class_images.get("peak_mb", 0.0)))

    def to_json(self) -> dict:
        return asdict(self)


def _bnb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _compile_available(device) -> bool:
    import importlib.util

    return getattr(device, "type", str(device)) == "cuda" and importlib.util.find_spec("triton") is not None


def _half_precision(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def candidates(cfg, device, bnb: bool | None = None, compile_ok: bool | None = None,
               bases: tuple[str, ...] | None = None) -> list[dict]:
    """Every candidate without checkpointing or streaming (the search adds those), fastest
    predicted first (ties keep this enumeration order); ``bases``: only these ``quantize_base``
    values (a LoRA's)."""
    bnb = _bnb_available() if bnb is None else bnb
    compile_ok = _compile_available(device) if compile_ok is None else compile_ok
    lora = cfg.method == "lora"
    half = _half_precision(device)
    optimizers = ["adamw"] + (["adamw8bit"] if bnb else []) + ["adafactor"]
    quants = (["off", "fp8"] + (["nf4"] if bnb else [])) if lora else ["off"]
    if cfg.use_dora:  # DoRA reads its base weight; the fp8 layer's rows need their scales
        quants = [q for q in quants if q != "fp8"]
    if bases is not None:
        quants = [q for q in quants if q in bases]
    precisions = [(half, False)] if lora else [("no", False), (half, False)] + ([("bf16", True)] if half == "bf16" else [])
    total = cfg.batch_size * cfg.gradient_accumulation
    micros = [m for m in range(cfg.batch_size, 0, -1) if total % m == 0]
    out = []
    for precision, full_bf16 in precisions:
        for fused in ((False,) if precision == "fp16" else (False, True)):  # fp16's scaler needs every gradient
            for quant in quants:
                for opt in optimizers:
                    for micro in micros:
                        c = {"mixed_precision": precision, "full_bf16": full_bf16,
                             "gradient_checkpointing": False, "checkpoint_blocks": 0,
                             "stream_blocks": 0, "fused_backward": fused,
                             "quantize_base": quant, "optimizer": opt, "batch_size": micro,
                             "gradient_accumulation": total // micro, "cache_latents": "memory",
                             "cache_text_embeddings": True,
                             "compile": "blocks" if compile_ok else "off",
                             "fused_optimizer": compile_ok and opt == "adamw" and not fused}
                        if cfg.cuda_graphs:  # kept where they can run: compiled blocks, one micro-step
                            c["cuda_graphs"] = compile_ok and micro == total
                        out.append(c)
    return sorted(out, key=lambda c: -speed_of(c, total))


_DEFAULTS = {"quantize_base": "off", "fused_backward": False, "full_bf16": False, "compile": "off",
             "fused_optimizer": False}


def speed_of(c: dict, total_batch: int, blocks: int = 0) -> float:
    """Predicted steps/s relative to fp32 with no technique (per effective batch)."""
    s = 1.0
    for name in ("mixed_precision", "quantize_base", "optimizer", "fused_backward", "full_bf16", "compile",
                 "fused_optimizer"):
        s *= SPEED[name][c.get(name, _DEFAULTS.get(name))]
    if c.get("gradient_checkpointing"):
        share = (c.get("checkpoint_blocks") or blocks) / blocks if blocks else 1.0
        s *= 1 - (1 - SPEED["checkpoint_all"]) * share
    if c.get("stream_blocks") and blocks:
        s *= 1 - (1 - SPEED["stream_all"]) * c["stream_blocks"] / blocks
    return round(s * (c["batch_size"] / total_batch) ** MICRO_BATCH_EXPONENT, 4)


def per_parameter_bytes(c: dict) -> int:
    """What one trained parameter costs beyond the forward pass: its weight, gradient,
    optimizer states and the multi-tensor optimizer's temporary (the planner's bound on what
    lighter optimizer switches save)."""
    weight = 2 if c.get("full_bf16") else 4
    grad = 0 if c.get("fused_backward") else weight
    states = {"adamw": 8, "adamw8bit": 2, "adafactor": 0}[c["optimizer"]]
    temporary = 4 if c["optimizer"] == "adamw" and not (c.get("fused_backward") or c.get("full_bf16")) else 0
    return weight + grad + states + temporary


def leanest(cands: list[dict]) -> dict:
    """The candidate that keeps least: everything checkpointed, the lightest base and
    optimizer, the fused backward pass, bf16 trained weights, the smallest micro-batch."""
    pick = min(cands, key=lambda c: (c["batch_size"], not c["fused_backward"], not c["full_bf16"],
                                     c["mixed_precision"] == "no",
                                     HEAVY["quantize_base"].index(c["quantize_base"]),
                                     HEAVY["optimizer"].index(c["optimizer"])))
    return {**pick, "gradient_checkpointing": True, "checkpoint_blocks": 0}


def _at_least_as_heavy(a: dict, b: dict) -> bool:
    """``a`` keeps at least what ``b`` keeps, switch by switch."""
    return (a["mixed_precision"] == b["mixed_precision"] and a["full_bf16"] <= b["full_bf16"]
            and a["fused_backward"] <= b["fused_backward"] and a["batch_size"] >= b["batch_size"]
            and all(HEAVY[k].index(a[k]) >= HEAVY[k].index(b[k]) for k in HEAVY))


# --- predicted peaks ------------------------------------------------------------------------

def _cache_file(name: str = "plans.json") -> Path:
    return cache_root() / name


def read_cache(name: str) -> dict:
    """A JSON memo in the cache root (empty when absent or unreadable)."""
    return _read_json(_cache_file(name))


def write_cache(name: str, data: dict) -> None:
    _write_json(_cache_file(name), data)


def _read_json(path: Path) -> dict:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
    return {}


def _write_json(path: Path, data: dict) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write at once
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


_MEMO: dict[str, dict] = {}
_CONFIG_FIELDS = ["family", "method", "resolution", "rank", "train_text_encoder", "prior_preservation",
                  "t5_max_length", "identity_loss_weight", "grad_set_to_none", "shuffle_tags", "use_dora", "ema",
                  "ema_on_cpu", "weight_decay", "attention"]


def _key(cfg, arch: str, extra: dict) -> str:
    data = {f: getattr(cfg, f) for f in _CONFIG_FIELDS}
    data.update(targets=cfg.lora_targets, arch=arch, extra=extra, version=VERSION)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def arch_id(family: str, base_model: str | None, size: str) -> str:
    folder = Path(base_model) if base_model else None
    if folder is not None and (folder / "model_index.json").is_file():
        parts = []
        for sub in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):
            f = folder / sub / "config.json"
            if f.is_file():
                parts.append(json.loads(f.read_text()))
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if folder is not None and folder.is_file() and size == "real":  # a family of several published sizes:
        from ...models.families import get_family  # the one the file is (what meta_components builds)

        size = get_family(family).published_size(folder)
    return f"{family}-{size}"


def _cuda_target(device, size: str, base_model: str | None = None) -> bool:
    """A CUDA device, or a family's published architecture (planned for a GPU wherever the
    planner runs: the Memory Plan node on a machine without one)."""
    return getattr(device, "type", str(device)) == "cuda" or (size != "tiny" and base_model is None)


def calibrate(simulated_mb: float, cuda: bool) -> float:
    if cuda:
        return simulated_mb * CALIBRATION["slope"] + CALIBRATION["offset_mb"]
    return simulated_mb * ALLOCATOR_MARGIN


def _switch_key(switches: dict) -> dict:
    # the speed switches change no memory the simulation sees
    return {k: v for k, v in switches.items() if k not in ("compile", "fused_optimizer", "cuda_graphs")}


class PlanInterrupted(RuntimeError):
    """The caller asked the search to stop (a cancel in the canvas)."""


class PlanTooLong(ConfigError):
    """The search ran past the caller's time bound (a shared server's queue must move)."""


_LIMITS: ContextVar[tuple | None] = ContextVar("persona_plan_limits", default=None)


@contextmanager
def interruptible(should_stop: Callable[[], bool], max_seconds: float | None = None):
    """Inside the block, a plan search asks ``should_stop`` before each simulation it has to
    run (each takes seconds, up to tens for a large model) and raises
    :class:`PlanInterrupted` when it says so, or :class:`PlanTooLong` once its simulations
    have run for ``max_seconds``."""
    import time

    token = _LIMITS.set((should_stop, time.monotonic() + max_seconds if max_seconds else None, max_seconds))
    try:
        yield
    finally:
        _LIMITS.reset(token)


def _check_limits(cfg) -> None:
    import time

    limits = _LIMITS.get()
    if limits is None:
        return
    should_stop, deadline, seconds = limits
    if should_stop():
        raise PlanInterrupted("the memory plan was cancelled")
    if deadline is not None and time.monotonic() > deadline:
        raise PlanTooLong(f"the memory plan's search ran past its bound of {seconds:.0f} s of simulation "
                          f"(family {cfg.family}, resolution {cfg.resolution}, batch_size {cfg.batch_size}, rank "
                          f"{cfg.rank}); plan a smaller batch_size or resolution")


def _simulated(cfg, switches: dict, base_model: str | None, size: str) -> tuple[dict, str]:
    """(``{"peak_mb", "trainable"}`` of the simulation, its memo key): memoised in memory and
    on disk."""
    from .simulate import polled, simulate

    validation = {"validation": True} if cfg.validate_every else {}  # sampled beside training: another phase
    key = _key(cfg, arch_id(cfg.family, base_model, size), {**_switch_key(switches), **validation})
    if key not in _MEMO:
        cache = _cache_file()
        stored = _read_json(cache)
        if key not in stored:
            _check_limits(cfg)
            data = cfg.model_dump()
            data.update(switches)
            data.update(memory="manual", compile="off", cuda_graphs=False, fused_optimizer=False)
            with polled(lambda: _check_limits(cfg)):  # a cancel stops a long simulation too
                out = simulate(cfg.family, type(cfg)(**data), base_model, size)
            stored[key] = {"peak_mb": out["peak_bytes"] / 2 ** 20, "trainable": out["trainable"]}
            if out.get("validation_peak_bytes") is not None:
                stored[key]["validation_peak_mb"] = out["validation_peak_bytes"] / 2 ** 20
            _write_json(cache, stored)
        _MEMO[key] = stored[key]
    return _MEMO[key], key


def predicted_peak_mb(cfg, switches: dict, base_model: str | None = None, size: str = "real",
                      device="cuda") -> float:
    """Predicted peak (MiB) of ``cfg`` with ``switches``, calibrated for the target device."""
    return calibrate(_simulated(cfg, switches, base_model, size)[0]["peak_mb"], _cuda_target(device, size, base_model))


def repeated_block_count(family: str, base_model: str | None, size: str) -> int:
    from ...models.families import get_family
    from .simulate import architecture

    return len(get_family(family).repeated_blocks(architecture(family, base_model, size).denoiser))


# --- the search -----------------------------------------------------------------------------

class _Search:
    def __init__(self, cfg, budget_mb, device, base_model, size):
        self.cfg, self.budget, self.device, self.base_model, self.size = cfg, budget_mb, device, base_model, size
        self.total = cfg.batch_size * cfg.gradient_accumulation
        self.tried: list[dict] = []
        # the distinct simulations this search asked for: a peak memoised by an earlier plan
        # counts too, so what is memoised never changes how far the search goes (nor its plan)
        self.simulated: set[str] = set()
        self.trainable = 0
        self.blocks = repeated_block_count(cfg.family, base_model, size)

    def peak(self, c: dict) -> float:
        result, key = _simulated(self.cfg, c, self.base_model, self.size)
        self.simulated.add(key)
        self.trainable = result["trainable"]
        # the training step, or validation sampling beside what training keeps (validate_every)
        p = calibrate(max(result["peak_mb"], result.get("validation_peak_mb", 0.0)),
                      _cuda_target(self.device, self.size, self.base_model))
        self.tried.append({**c, "predicted_peak_mb": round(p, 1)})
        return p

    def bound(self, c: dict, evaluated: list[tuple[dict, float, float, float | None]]) -> float | None:
        """An upper bound on the speed of any variant of ``c`` from an evaluated candidate that
        differs only in per-parameter switches (optimizer, fused backward, bf16 weights): its
        peaks (none, all checkpointed, all checkpointed and every block streamed) less at most
        what ``c`` saves per trained parameter. None: no such candidate."""
        # a full fine-tune's peak is its optimizer step (weights, gradients, states), whatever
        # the compute precision; a LoRA's is its activations, which the precision changes
        same = ("quantize_base", "batch_size") if self.cfg.method != "lora" else \
            ("mixed_precision", "quantize_base", "batch_size")
        for r, p0, p_all, p_stream in evaluated:
            if any(r[k] != c[k] for k in same):
                continue
            saved = max(0, per_parameter_bytes(r) - per_parameter_bytes(c)) * self.trainable / 2 ** 20
            low0, low_all = p0 - saved, p_all - saved
            if low0 <= self.budget:
                return self.speed(c)
            if low_all <= self.budget:
                n = max(1, math.ceil(self.blocks * (low0 - self.budget) / (low0 - low_all)))
                return self.speed(self._with(c, "checkpoint", n))
            if p_stream is None:  # nothing streams this base (a full fine-tune, DoRA, a bitsandbytes base)
                return 0.0
            low_stream = p_stream - saved
            if low_stream > self.budget:
                return 0.0
            n = max(1, math.ceil(self.blocks * (low_all - self.budget) / (low_all - low_stream)))
            return self.speed({**self._with(c, "checkpoint", self.blocks), "stream_blocks": n})
        return None

    def speed(self, c: dict) -> float:
        return speed_of(c, self.total, self.blocks)

    def fewest(self, c: dict, kind: str, lo_peak: float, hi_peak: float,
               bounded: bool = True) -> tuple[dict, float] | None:
        """The fewest checkpointed (``kind`` checkpoint) or streamed blocks of ``c`` that fit,
        between none (``lo_peak``) and all (``hi_peak``, which fits): interpolated, confirmed
        by a simulation, else halfway to all, else all. ``bounded``: within the search's
        simulation bound."""
        n_max = self.blocks
        if lo_peak <= hi_peak:
            return None
        n = max(1, min(n_max, math.ceil(n_max * (lo_peak - self.budget) / (lo_peak - hi_peak))))
        for _ in range(2):
            if n >= n_max or (bounded and self.spent()):
                break
            trial = self._with(c, kind, n)
            p = self.peak(trial)
            if p <= self.budget:
                return trial, p
            n = (n + n_max + 1) // 2
        return self._with(c, kind, n_max), hi_peak

    def spent(self) -> bool:
        return len(self.simulated) > MAX_SIMULATIONS

    def _with(self, c: dict, kind: str, n: int) -> dict:
        if kind == "checkpoint":
            return {**c, "gradient_checkpointing": True, "checkpoint_blocks": 0 if n >= self.blocks else n}
        return {**c, "stream_blocks": n}


def _plan_key(cfg, budget_mb, device, base_model, size, bnb, compile_ok, bases=None) -> str:
    # search 3: a search's length no longer depends on what is memoised (plans memoised by search 2
    # could); fp8 bases are streamed too (search 2)
    from .host_memory import text_weight_bytes

    text_files = text_weight_bytes(cfg)  # the caching phase weighs a separate text encoder file as read
    return _key(cfg, arch_id(cfg.family, base_model, size),
                {**({"bases": list(bases)} if bases is not None else {}),
                 # text 2: the class-image phase weighs them as read too
                 **({"text_files": text_files, "text": 2} if text_files else {}), "plan": True, "whole_run": 2,
                 "search": 3, "validation": cfg.validate_every > 0,
                 "budget": round(budget_mb, 1), "batch": cfg.batch_size,
                 "accumulation": cfg.gradient_accumulation, "bnb": bnb, "compile": compile_ok,
                 "half": _half_precision(device), "cuda": _cuda_target(device, size, base_model),
                 **({"graphs": True} if cfg.cuda_graphs else {})})  # graphs asked for: kept where they run


def usable_budget(budget_mb: float, cuda: bool, context_mb: float | None = None) -> float:
    """What a plan may predict within ``budget_mb``: on a CUDA target the budget less the CUDA
    context (``context_mb``, default :data:`CONTEXT_MB`; 0 when the budget is the free memory
    read from the device) and the allocator's reserve (:data:`RESERVE_FRACTION`)."""
    if not cuda:
        return budget_mb
    context = CONTEXT_MB if context_mb is None else context_mb
    return max(0.0, (budget_mb - context) / (1 + RESERVE_FRACTION))


def plan(cfg, budget_mb: float, device="cuda", base_model: str | None = None, size: str = "real",
         bnb: bool | None = None, compile_ok: bool | None = None, context_mb: float | None = None,
         bases: tuple[str, ...] | None = None) -> Plan:
    """The plan for ``cfg`` within ``budget_mb`` (see the module's text); every phase's predicted
    peak fits :func:`usable_budget`. ``bases``: a LoRA's base quantized only so (``("fp8",)``:
    :func:`within_host_memory`)."""
    bnb = _bnb_available() if bnb is None else bnb
    compile_ok = _compile_available(device) if compile_ok is None else compile_ok
    usable = usable_budget(budget_mb, _cuda_target(device, size, base_model), context_mb)
    key = _plan_key(cfg, budget_mb, device, base_model, size, bnb, compile_ok, bases) + f"-{usable:.1f}"
    stored = _read_json(_cache_file("whole_plans.json"))
    if key in stored:
        return Plan(**stored[key])
    result = _search(cfg, budget_mb, usable, device, base_model, size, bnb, compile_ok, bases)
    stored = _read_json(_cache_file("whole_plans.json"))
    stored[key] = result.to_json()
    _write_json(_cache_file("whole_plans.json"), stored)
    return result


def _search(cfg, budget_mb, usable_mb, device, base_model, size, bnb, compile_ok, bases=None) -> Plan:
    s = _Search(cfg, usable_mb, device, base_model, size)
    cands = candidates(cfg, device, bnb, compile_ok, bases)
    streaming = cfg.method == "lora" and not cfg.use_dora
    lean = leanest(cands)
    lean_peak = s.peak(lean)
    if lean_peak > usable_mb and streaming:  # streaming every block of a streamable base
        alt = {**leanest([c for c in cands if c["quantize_base"] in STREAMABLE]), "stream_blocks": s.blocks}
        alt_peak = s.peak(alt)
        if alt_peak < lean_peak:
            lean, lean_peak = alt, alt_peak
    if lean_peak > usable_mb:
        raise PlanError(
            f"memory plan: nothing fits {size_text(budget_mb)}"
            + (f" ({size_text(usable_mb)} usable)" if usable_mb < budget_mb else "")
            + f" for {cfg.family} {cfg.method} at "
            f"{cfg.resolution}px, batch {cfg.batch_size}: the leanest plan ({_short(lean)}) needs "
            f"{size_text(lean_peak)}. Lower resolution, rank or batch"
            + (", use method 'lora'" if cfg.method != "lora" else "")
            + ("" if bnb else ", install bitsandbytes (nf4 base, 8-bit AdamW)")
            + ", or use a larger GPU")
    best: tuple[dict, float] | None = None
    failed: list[dict] = []  # does not fit even with every block checkpointed
    evaluated: list[tuple[dict, float, float, float | None]] = []
    for c in cands:
        if best is not None and s.speed(c) <= s.speed(best[0]):
            break  # no variant of c (or of anything after it) is faster
        if s.spent():
            break
        if any(_at_least_as_heavy(c, f) for f in failed):
            continue
        bound = s.bound(c, evaluated) if best is not None else None
        if bound is not None and bound <= s.speed(best[0]):
            continue  # what c saves per parameter cannot make it faster than the best
        full = s._with(c, "checkpoint", s.blocks)
        p_all = None
        if any(e[3] is not None for e in evaluated):  # an earlier candidate streamed: check the
            p_all = s.peak(full)  # checkpointed peak first, which spares the unneeded peak without
        if p_all is not None and p_all > usable_mb:
            p0 = p_all  # (a lower bound, for the bound above: without checkpointing it keeps more)
        else:
            p0 = s.peak(c)
            if p0 <= usable_mb:
                best = (c, p0)
                break
            p_all = s.peak(full) if p_all is None else p_all
        p_stream = None
        options = []
        if p_all <= usable_mb:
            options.append(s.fewest(c, "checkpoint", p0, p_all) or (full, p_all))
        else:
            failed.append(c)
            if streaming and c["quantize_base"] in STREAMABLE:  # stream on top of full checkpointing
                streamed = {**full, "stream_blocks": s.blocks}
                p_stream = s.peak(streamed)
                if p_stream <= usable_mb:
                    options.append(s.fewest(full, "stream", p_all, p_stream) or (streamed, p_stream))
        evaluated.append((c, p0, p_all, p_stream))
        for option in options:
            if best is None or s.speed(option[0]) > s.speed(best[0]):
                best = option
    if best is None or s.speed(lean) > s.speed(best[0]):  # the bounded search found nothing faster
        best = (lean, lean_peak)
    if best[0].get("stream_blocks") == s.blocks:  # every block streamed: only as many as the budget needs
        unstreamed = {**best[0], "stream_blocks": 0}
        best = s.fewest(unstreamed, "stream", s.peak(unstreamed), best[1], bounded=False) or best
    light = {**lean, "gradient_checkpointing": False, "checkpoint_blocks": 0}  # the lightest, recomputing nothing
    if best[0].get("gradient_checkpointing") and s.speed(light) > s.speed(best[0]):
        p_light = s.peak(light)
        if p_light <= usable_mb:
            best = (light, p_light)
    switches, peak = dict(best[0]), best[1]
    from .caching import plan_caching

    cuda = _cuda_target(device, size, base_model)
    caching = plan_caching(cfg.model_copy(update=switches), base_model, size, usable_mb,
                           lambda mb: calibrate(mb, cuda))
    if caching["encode_on_cpu"]:
        switches["encode_on_cpu"] = caching["encode_on_cpu"]
    class_images = {}
    if cfg.prior_preservation:
        from .class_images import plan_class_images

        class_images = plan_class_images(cfg.model_copy(update=switches), base_model, size, usable_mb,
                                         lambda mb: calibrate(mb, cuda))
        if not class_images["fits"]:
            raise PlanError(
                f"prior_preservation: sampling its class images holds the base model on the GPU and needs "
                f"{size_text(class_images['peak_mb'])} at the least, more than the {size_text(usable_mb)} usable of "
                f"{size_text(budget_mb)} for {cfg.family} at {cfg.resolution}px; switch prior_preservation off, "
                f"or use a larger GPU")
        on_cpu = [n for n in ("vae", "text_encoder", "text_encoder_2")  # a text encoder on the CPU in
                  if n in caching["encode_on_cpu"] or n in class_images["text_on_cpu"]]  # either phase: in both
        if on_cpu:
            switches["encode_on_cpu"] = on_cpu
    return Plan(cfg.family, cfg.method, cfg.resolution, s.total, budget_mb, switches, peak, s.speed(switches),
                s.tried, s.blocks, round(usable_mb, 1), caching, cfg.validate_every > 0, class_images)


def switches_text(switches: dict) -> str:
    """``switches`` that are on, as ``k=v, ...`` (the batch split and the always-on caches left out)."""
    return ", ".join(f"{k}={v}" for k, v in switches.items() if v not in (False, 0, "off", None, [])
                     and k not in ("batch_size", "gradient_accumulation", "cache_latents", "cache_text_embeddings"))


def size_text(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.1f} MB"


def _short(c: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in c.items() if k not in ("cache_latents", "cache_text_embeddings"))


def budget_mb_for(cfg, device) -> float:
    if cfg.vram_budget_gb > 0:
        return cfg.vram_budget_gb * 1024
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        raise type(cfg).field_error("vram_budget_gb", "memory 'auto' on a machine without a CUDA "
                          "device needs a budget (no free VRAM to read)")
    free, _ = torch.cuda.mem_get_info(device)
    return free / 2 ** 20


def within_host_memory(cfg, chosen: Plan, fp8_plan: Callable[[], Plan], available: int | None = None,
                       processes: int = 1) -> Plan:
    """``chosen``, or where loading its base in each of ``processes`` processes would take more
    system memory than is ``available`` (default: what the system reports) and reading the
    transformer file's fp8 weights as stored would not, the plan ``fp8_plan`` searches among
    fp8 bases only.

    The search weighs GPU memory and speed alone; a LoRA on an fp8 transformer file loads it at
    one byte per weight when its base is fp8 (``host_memory.reads_fp8_as_stored``) and at two
    when it is bf16 or nf4 (read as bf16 first): Qwen-Image's fp8 file about 20 GB against 40.
    The faster plan is kept wherever it loads; where neither loads, the run's host-memory check
    refuses it with both figures."""
    from .host_memory import as_stored_load_bytes, available_bytes, load_bytes, reads_fp8_as_stored

    if cfg.use_dora or chosen.switches.get("quantize_base") == "fp8":  # (DoRA plans no fp8 base)
        return chosen
    need_fp8 = as_stored_load_bytes(cfg, processes)
    if need_fp8 is None:
        return chosen
    run = chosen.apply(cfg)
    need = load_bytes(run, reads_fp8_as_stored(run, chosen.class_images.get("quantize"))) * processes
    have = available_bytes() if available is None else available
    if need <= have or need_fp8 >= need or need_fp8 > have:
        return chosen
    try:
        alternative = fp8_plan()
    except PlanError as e:
        log.info("memory plan: no fp8 base fits the budget (%s); the plan stays %s", e, chosen.summary())
        return chosen
    if not reads_fp8_as_stored(alternative.apply(cfg), alternative.class_images.get("quantize")):
        return chosen
    alternative.host_memory = (
        f"system memory: the base is fp8, read as the file stores it (about {need_fp8 / 2 ** 30:.1f} GB to load), "
        f"because the faster plan ({chosen.summary()}; {chosen.relative_speed:.2f}x) reads the file's fp8 weights as "
        f"bf16 (about {need / 2 ** 30:.1f} GB) and {have / 2 ** 30:.1f} GB is available")
    return alternative


def plan_for_config(cfg, device, available: int | None = None, processes: int = 1) -> Plan:
    """The plan of a run: the model's own architecture (its folder's configs, or the family's
    published size for single files) and the budget from the config or the free VRAM (which
    already holds the CUDA context), its base fp8 where only that loads, once in each of
    ``processes`` processes, in the system memory ``available`` (:func:`within_host_memory`)."""
    budget = budget_mb_for(cfg, device)
    context = None if cfg.vram_budget_gb > 0 else 0.0
    chosen = plan(cfg, budget, device, cfg.base_model, "real", context_mb=context)
    return within_host_memory(cfg, chosen, lambda: plan(cfg, budget, device, cfg.base_model, "real",
                                                        context_mb=context, bases=("fp8",)), available, processes)


def plan_request(family: str, method: str, resolution: int, batch_size: int, gradient_accumulation: int,
                 rank: int, train_text_encoder: bool, vram_budget_gb: float, base_model: str | None = None,
                 device="auto") -> Plan:
    """A plan without a dataset or a run: for a model folder's architecture, or the family's
    published size (what the Persona Memory Plan node asks). System memory is not weighed here:
    without the run's text encoder and VAE files its load is not known (a run weighs it,
    :func:`plan_for_config`)."""
    from ..config import TrainConfig
    from .techniques import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    cfg = TrainConfig.from_dict(dict(
        base_model=base_model or "(planning)", dataset="(planning)", family=family, method=method,
        resolution=resolution, batch_size=batch_size, gradient_accumulation=gradient_accumulation, rank=rank,
        alpha=float(rank), train_text_encoder=train_text_encoder, vram_budget_gb=vram_budget_gb, memory="auto"),
        source="memory plan")
    return plan(cfg, budget_mb_for(cfg, device), device, base_model, "real",
                context_mb=None if vram_budget_gb > 0 else 0.0)
