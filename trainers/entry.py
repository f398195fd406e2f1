"""The one headless training entry: a config in, events out.

``persona train``, ``python -m comfyui_persona.trainers`` (and ``accelerate launch -m ...``
for several GPUs), the Train node's child process (``trainers/child.py``) and the tests all
train through :func:`run`; its arguments are parsed by :func:`add_arguments` /
:func:`config_from_args`, shared with the CLI. Events follow ``trainers.events``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from ..core.config import ConfigError
from . import events
from .config import TrainConfig, with_preset

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", nargs="?", help="TrainConfig file (JSON or YAML)")
    parser.add_argument("--preset", help="start from a preset (balanced, identity-strong, prompt-strong, ...)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument("--json-events", action="store_true", help="one JSON event per line on stdout")
    parser.add_argument("--stop-on-stdin", action="store_true",
                        help="stop (after a checkpoint) when 'stop' is read on stdin, or when stdin closes because "
                             "the process that started the run has gone (trainers/stop.py)")
    return parser


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (VALUE read as JSON when it parses, else as a string)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected KEY=VALUE, got '{item}'")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.resume:
        path = Path(args.resume) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: '{args.resume}' has no config.json (not a run directory)")
        return TrainConfig.from_file(path)
    if not args.config:
        raise ValueError("give a CONFIG file, or --resume RUN_DIR")
    fields = with_preset(TrainConfig.read_file(args.config), args.preset, parse_overrides(args.set or []))
    return TrainConfig.from_dict(fields, source=f"config file '{args.config}'")


def run(cfg: TrainConfig, resume: bool = False, on_event: Callable[[str, dict], None] | None = None,
        stop_on_stdin: bool = False):
    """Train ``cfg``; a stop request (``stop_on_stdin``: a line on stdin or its end, see
    ``stop``; or SIGTERM where the system sends one) checkpoints at the end of the step, then
    stops. In data-parallel training only the first process emits events. Returns the
    TrainResult."""
    from .loop import Callbacks, train

    stop = {"requested": False}
    channel = None
    if stop_on_stdin:
        from .stop import StopChannel

        channel = StopChannel()

    def request_stop(_signum, _frame):
        stop["requested"] = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    first = os.environ.get("RANK", "0") == "0"
    emit = on_event if (on_event and first) else None

    def on_start(info):
        if info.get("plan") is not None:
            emit(events.PLAN, events.plan_event(info["plan"]))

    callbacks = Callbacks(on_log=(lambda record: emit(events.LOG, record)) if emit else None,
                          on_start=on_start if emit else None,
                          should_stop=lambda: stop["requested"] or bool(channel and channel()))
    try:
        result = train(cfg, callbacks, resume=resume)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if emit:
        emit(events.DONE, events.summary(result))
    return result


def _terminal_events(total: int):
    """Progress on stderr and the summary on stdout, for a person at a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="train", unit="step", file=sys.stderr)

    def on_event(kind: str, data: dict) -> None:
        if kind == events.PLAN:
            bar.write(data["text"], file=sys.stderr)
        elif kind == events.LOG:
            bar.n = data["step"]
            bar.set_postfix(loss=f"{data['loss']:.4f}", lr=f"{data['lr']:.2e}", refresh=False)
            bar.refresh()
        elif kind == events.DONE:
            bar.close()
            sys.stdout.write("".join(f"{key:>15}: {value}\n" for key, value in data.items()))

    return on_event, bar


def run_from_args(args: argparse.Namespace) -> int:
    """Exit code: 0 done (or stopped on request), 2 a config or checkpoint error."""
    from .outputs.checkpoint import CheckpointError

    try:
        cfg = config_from_args(args)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json_events:
        bar = None

        def on_event(kind, data):  # the event protocol: one JSON line per event on stdout
            try:
                sys.stdout.write(events.encode(kind, data) + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):  # nobody reads any more: the parent has gone, and the
                pass  # stop channel stops the run (with a checkpoint) at the end of this step
    else:
        on_event, bar = _terminal_events(cfg.steps)
    try:
        run(cfg, resume=bool(args.resume), on_event=on_event, stop_on_stdin=args.stop_on_stdin)
    except (ConfigError, CheckpointError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    finally:
        if bar is not None:
            bar.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m comfyui_persona.trainers",
                                                   description="Train a LoRA or DreamBooth model from a TrainConfig."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_from_args(args)
