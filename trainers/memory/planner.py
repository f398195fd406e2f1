"""The memory planner: the memory switches that fit a VRAM budget at the best predicted speed.

Each candidate plan (precision, gradient checkpointing, optimizer, quantized base,
micro-batch with accumulation keeping the effective batch; the latent and text-embedding
caches are always on, as they save memory and time) gets

- a predicted peak: the training step run on the ``meta`` device through the loop's own
  setup and step code, with every live tensor counted (``memory_sim``), times 1.05 for the
  CUDA allocator's rounding;
  (full fine-tunes are planned in fp32: autocast, which a half-precision full fine-tune needs
  for its fp32 master weights, cannot run on ``meta``);
- a predicted speed relative to full precision with no technique: a product of documented
  factors (``SPEED``), which the benchmark checks against measured steps/s.

Candidates are tried fastest first; the first that fits is the plan. The leanest candidate is
tried before all others, and when even it does not fit the planner refuses with the numbers.
Everything is deterministic: same inputs, same plan.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ...core.config import ConfigError
from ...core.paths import cache_root

log = logging.getLogger(__name__)

ALLOCATOR_MARGIN = 1.05
SPEED = {
    "mixed_precision": {"no": 1.0, "bf16": 2.0, "fp16": 2.0},  # tensor cores vs fp32
    "gradient_checkpointing": {False: 1.0, True: 0.77},  # one more forward per step
    "quantize_base": {"off": 1.0, "fp8": 0.92, "nf4": 0.8, "int8": 0.6},  # dequantization per layer
    "optimizer": {"adamw": 1.0, "adamw8bit": 0.99, "adafactor": 0.97},
}
MICRO_BATCH_EXPONENT = 0.15  # per-sample speed ~ (micro / batch) ** 0.15


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
        rows.append(f"predicted peak: {size_text(self.predicted_peak_mb)}; predicted speed: "
                    f"{self.relative_speed:.2f}x of fp32 with no technique ({len(self.tried)} candidates simulated)")
        return "\n".join(rows)


def _bnb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _half_precision(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def candidates(cfg, device, bnb: bool | None = None) -> list[dict]:
    """Every candidate, fastest predicted first (ties keep this enumeration order)."""
    bnb = _bnb_available() if bnb is None else bnb
    lora = cfg.method == "lora"
    optimizers = ["adamw"] + (["adamw8bit"] if bnb else []) + ["adafactor"]
    quants = ["off", "fp8"] + (["nf4"] if bnb else []) if lora else ["off"]
    if cfg.use_dora:  # DoRA reads its base weight; the fp8 layer's rows need their scales
        quants = [q for q in quants if q != "fp8"]
    total = cfg.batch_size * cfg.gradient_accumulation
    micros = [m for m in range(cfg.batch_size, 0, -1) if total % m == 0]
    out = []
    for ckpt in (False, True):
        for quant in quants:
            for opt in optimizers:
                for micro in micros:
                    out.append({"mixed_precision": _half_precision(device) if lora else "no",
                                "gradient_checkpointing": ckpt,
                                "quantize_base": quant, "optimizer": opt, "batch_size": micro,
                                "gradient_accumulation": total // micro, "cache_latents": "memory",
                                "cache_text_embeddings": True})
    return sorted(out, key=lambda c: -speed_of(c, total))


def speed_of(c: dict, total_batch: int) -> float:
    s = 1.0
    for name, table in SPEED.items():
        s *= table[c[name]]
    return round(s * (c["batch_size"] / total_batch) ** MICRO_BATCH_EXPONENT, 4)


def leanest(cands: list[dict]) -> dict:
    order = {"quantize_base": ["nf4", "int8", "fp8", "off"], "optimizer": ["adamw8bit", "adafactor", "adamw"]}
    return min(cands, key=lambda c: (not c["gradient_checkpointing"], c["batch_size"],
                                     order["quantize_base"].index(c["quantize_base"]),
                                     order["optimizer"].index(c["optimizer"])))


def _cache_file() -> Path:
    return cache_root() / "plans.json"


_MEMO: dict[str, float] = {}


def _key(cfg, arch: str, switches: dict) -> str:
    fields = ["family", "method", "resolution", "rank", "train_text_encoder", "prior_preservation", "t5_max_length",
              "identity_loss_weight", "grad_set_to_none", "shuffle_tags", "use_dora", "ema", "ema_on_cpu"]
    data = {f: getattr(cfg, f) for f in fields}
    data.update(targets=cfg.lora_targets, arch=arch, switches=switches, version=2)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _arch_id(family: str, base_model: str | None, size: str) -> str:
    folder = Path(base_model) if base_model else None
    if folder is not None and (folder / "model_index.json").is_file():
        parts = []
        for sub in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):
            f = folder / sub / "config.json"
            if f.is_file():
                parts.append(json.loads(f.read_text()))
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{family}-{size}"


def predicted_peak_mb(cfg, switches: dict, base_model: str | None = None, size: str = "real") -> float:
    """Predicted peak (MiB) of ``cfg`` with ``switches``, memoised in memory and on disk."""
    from .simulate import simulate_peak

    key = _key(cfg, _arch_id(cfg.family, base_model, size), switches)
    if key in _MEMO:
        return _MEMO[key]
    cache = _cache_file()
    stored = {}
    if cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError):
            stored = {}
    if key not in stored:
        data = cfg.model_dump()
        data.update(switches)
        data.update(memory="manual")
        trial = type(cfg)(**data)
        stored[key] = simulate_peak(cfg.family, trial, base_model, size) / 2 ** 20 * ALLOCATOR_MARGIN
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(cache)
    _MEMO[key] = stored[key]
    return stored[key]


def plan(cfg, budget_mb: float, device="cuda", base_model: str | None = None, size: str = "real",
         bnb: bool | None = None) -> Plan:
    cands = candidates(cfg, device, bnb)
    total = cfg.batch_size * cfg.gradient_accumulation
    tried: list[dict] = []
    lean = leanest(cands)
    lean_peak = predicted_peak_mb(cfg, lean, base_model, size)
    tried.append({**lean, "predicted_peak_mb": round(lean_peak, 1)})
    if lean_peak > budget_mb:
        raise PlanError(
            f"memory plan: nothing fits {size_text(budget_mb)} for {cfg.family} {cfg.method} at "
            f"{cfg.resolution}px, batch {cfg.batch_size}: the leanest plan ({_short(lean)}) needs "
            f"{size_text(lean_peak)}. Lower resolution, rank or batch"
            + (", use method 'lora'" if cfg.method != "lora" else "")
            + ("" if _bnb_available() else ", install bitsandbytes (nf4 base, 8-bit AdamW)")
            + ", or use a larger GPU")
    failed: list[dict] = []
    for c in cands:
        if c != lean and any(_at_least_as_heavy(c, f) for f in failed):
            continue  # needs at least the memory of a candidate that did not fit
        peak = lean_peak if c == lean else predicted_peak_mb(cfg, c, base_model, size)
        if c != lean:
            tried.append({**c, "predicted_peak_mb": round(peak, 1)})
        if peak > budget_mb:
            failed.append(c)
        else:
            return Plan(cfg.family, cfg.method, cfg.resolution, total, budget_mb, c, peak, speed_of(c, total), tried)
    raise AssertionError("unreachable: the leanest candidate fits")  # pragma: no cover


_HEAVY = {"quantize_base": ["nf4", "int8", "fp8", "off"], "optimizer": ["adamw8bit", "adafactor", "adamw"]}


def _at_least_as_heavy(a: dict, b: dict) -> bool:
    """``a`` keeps at least what ``b`` keeps, switch by switch (same precision)."""
    return (a["mixed_precision"] == b["mixed_precision"]
            and a["gradient_checkpointing"] <= b["gradient_checkpointing"]
            and a["batch_size"] >= b["batch_size"]
            and all(_HEAVY[k].index(a[k]) >= _HEAVY[k].index(b[k]) for k in _HEAVY))


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
    return free / 2 ** 20 * 0.95


def plan_for_config(cfg, device) -> Plan:
    """The plan of a run: the model's own architecture (its folder's configs, or the family's
    published size for single files) and the budget from the config or the free VRAM."""
    return plan(cfg, budget_mb_for(cfg, device), device, cfg.base_model, "real")


def plan_request(family: str, method: str, resolution: int, batch_size: int, gradient_accumulation: int,
                 rank: int, train_text_encoder: bool, vram_budget_gb: float, base_model: str | None = None,
                 device="auto") -> Plan:
    """A plan without a dataset or a run: for a model folder's architecture, or the family's
    published size (what the Persona Memory Plan node asks)."""
    from ..config import TrainConfig
    from .techniques import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    cfg = TrainConfig(base_model=base_model or "(planning)", dataset="(planning)", family=family, method=method,
                      resolution=resolution, batch_size=batch_size, gradient_accumulation=gradient_accumulation,
                      rank=rank, alpha=float(rank), train_text_encoder=train_text_encoder,
                      vram_budget_gb=vram_budget_gb, memory="auto")
    return plan(cfg, budget_mb_for(cfg, device), device, base_model, "real")
