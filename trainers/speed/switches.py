"""The speed switches that change how the denoiser runs, not what it computes: channels-last
memory format (UNets), and regional compilation of the repeated blocks with CUDA graphs
(``compile: blocks``, ``cuda_graphs``). Each falls back to eager PyTorch with a log line where
it is unsupported, so a config stays valid on every machine, and a compiled block that fails to
compile or to run falls back to eager PyTorch for the rest of the run (:func:`fall_back_to_eager`):
compilation can make a run faster, never end it.

Regional compilation compiles each repeated block (``Family.repeated_blocks``) rather than the
whole denoiser: the blocks of one class and shape share one compiled graph (at the published
sizes SD1.5's 38 blocks need 19 graphs, SDXL's 87 need 15, FLUX's 57 need 3), so the compile
time is that of a few blocks, and Inductor's cache (``PERSONA_CACHE``/inductor unless
``TORCHINDUCTOR_CACHE_DIR`` is set) is reused by every later run of the same shapes. Blocks
whose weights are streamed (``stream_blocks``) stay eager: their weights change storage
between calls.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


BACKEND_ENV = "PERSONA_COMPILE_BACKEND"


def compile_backend() -> str:
    """The ``torch.compile`` backend: Inductor, or the one named by ``PERSONA_COMPILE_BACKEND``
    (``aot_eager`` to look for graph breaks without Inductor, say); a named backend runs on any
    device."""
    return os.environ.get(BACKEND_ENV, "").strip() or "inductor"


def compile_unsupported(device: torch.device) -> str | None:
    """Why ``torch.compile`` is not used on ``device`` (None: it is)."""
    if compile_backend() != "inductor":
        return None if hasattr(torch.nn.Module, "compile") else f"torch {torch.__version__} has no Module.compile"
    if device.type != "cuda":
        return f"compile needs a CUDA device (this run is on {device.type})"
    if not hasattr(torch.nn.Module, "compile"):
        return f"torch {torch.__version__} has no Module.compile (torch >= 2.2)"
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (Inductor's GPU kernels need it)"
    return None


def _use_persona_compile_cache() -> None:
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from ...core.paths import cache_root

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")


def apply_speed_switches(model: torch.nn.Module, family, cfg, device: torch.device,
                         skip: tuple[torch.nn.Module, ...] = ()) -> dict:
    """Apply ``cfg``'s speed switches to ``model``. Returns what was applied
    (``{"channels_last": bool, "compiled_blocks": int, "cuda_graphs": bool}``)."""
    applied = {"channels_last": False, "compiled_blocks": 0, "cuda_graphs": False}
    if cfg.channels_last:
        if family.convolutional:
            model.to(memory_format=torch.channels_last)
            applied["channels_last"] = True
        else:
            log.info("channels_last: the %s denoiser has no convolutions; ignored", family.name)
    if cfg.compile == "blocks":
        why = compile_unsupported(device)
        if why:
            log.warning("compile: %s; the blocks run eagerly%s", why,
                        " (and without CUDA graphs)" if cfg.cuda_graphs else "")
            return applied
        _use_persona_compile_cache()
        skipped = {id(m) for m in skip}
        blocks = [b for b in family.repeated_blocks(model) if id(b) not in skipped]
        graphs = cfg.cuda_graphs
        if graphs and (why := graphs_unsupported(cfg)):
            log.warning("cuda_graphs: %s; the blocks are compiled without graphs", why)
            graphs = False
        # reduce-overhead: Inductor's kernels replayed as CUDA graphs
        applied["compiled_blocks"] = compile_blocks(blocks, mode="reduce-overhead" if graphs else None,
                                                    backend=compile_backend())
        applied["cuda_graphs"] = graphs
        model._persona_compiled = blocks
        log.info("compile: %d blocks compiled%s", applied["compiled_blocks"], " with CUDA graphs" if graphs else "")
    return applied


def graphs_unsupported(cfg) -> str | None:
    """Why the compiled blocks of ``cfg`` cannot be captured in CUDA graphs (None: they can).

    Diffusers' gradient checkpointing calls each block from outside it: the compiled block
    then runs again inside backward, where CUDA graph trees see tensors freed while recording
    that are alive while replaying, and fail (PyTorch issue 154306). Selective checkpointing
    (``checkpoint_blocks``) wraps the block's own forward, so the checkpoint is inside the
    compiled region and Inductor recomputes within the captured backward."""
    if cfg.gradient_checkpointing and not cfg.checkpoint_blocks:
        return ("gradient checkpointing of every block recomputes each compiled block from outside it, which "
                "CUDA graph trees cannot record (PyTorch issue 154306); checkpoint_blocks N (selective "
                "checkpointing, inside the compiled region) keeps the graphs")
    return None


# graphs a compiled block may need for one set of shapes: the training step, and sampling
# (validation) with and without classifier-free guidance's doubled batch
GRAPHS_PER_SHAPE = 4


def compile_blocks(blocks: list[torch.nn.Module], mode: str | None = None, backend="inductor") -> int:
    """``torch.compile`` each of ``blocks`` with static shapes (``mode``/``backend`` as
    ``torch.compile`` takes them). Returns how many were compiled.

    Blocks of one class share one code object, and Dynamo keeps at most ``recompile_limit``
    (8) graphs per code object before it runs further variants eagerly: a UNet's resnet
    blocks alone come in 15 shapes at SD1.5's size (channel widths, resolutions, skip
    concatenations), so without a higher limit half of them would silently stay uncompiled.
    The limit is raised to cover every block in each of the shapes a run uses."""
    import torch._dynamo.config as dynamo

    need = GRAPHS_PER_SHAPE * len(blocks)
    name = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    if getattr(dynamo, name) < need:
        log.info("compile: Dynamo's %s raised from %d to %d (one graph per block shape)", name,
                 getattr(dynamo, name), need)
        setattr(dynamo, name, need)
    if hasattr(dynamo, "accumulated_recompile_limit"):
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 2 * need)
    elif hasattr(dynamo, "accumulated_cache_size_limit"):
        dynamo.accumulated_cache_size_limit = max(dynamo.accumulated_cache_size_limit, 2 * need)
    for block in blocks:
        block.compile(mode=mode, backend=backend, dynamic=False)
    return len(blocks)


def fall_back_to_eager(model: torch.nn.Module, exc: BaseException) -> bool:
    """After ``exc`` was raised by a step or a sampling pass of ``model``: if ``model`` has
    compiled blocks, make every one of them eager again, log one line naming the error and
    return True (the caller repeats what failed); otherwise False (the caller re-raises).

    Out-of-memory errors are not compilation's fault and are never taken for it. Whatever
    failed is repeated from its start (:func:`eager_on_failure`): gradients of the failed step
    are dropped first; with ``fused_backward`` the tensors that had already stepped inside a
    failed backward keep that step."""
    blocks = getattr(model, "_persona_compiled", None)
    if not blocks or isinstance(exc, torch.OutOfMemoryError):
        return False
    for block in blocks:
        block._compiled_call_impl = None  # what Module.compile set: the block's own forward again
    model._persona_compiled = None
    # Dynamo's message: "backend='…' raised:" then the backend's own error, then tips
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])[:300]
    log.warning("compile: the compiled blocks failed (%s: %s); the %d blocks run eagerly for the rest of the run",
                type(exc).__name__, first, len(blocks))
    return True


def eager_on_failure(model: torch.nn.Module, run, before_retry=None):
    """``run()``; if it raises and :func:`fall_back_to_eager` takes the error, ``before_retry()``
    then ``run()`` again with every block eager."""
    try:
        return run()
    except Exception as exc:
        if not fall_back_to_eager(model, exc):
            raise
        if before_retry is not None:
            before_retry()
        return run()
