"""Training in a child process (what the ComfyUI node and the sweep use): an out-of-memory
error or a crash ends the child, never the server; progress streams back as events
(``events``); a cancel asks the child to stop through its standard input (``stop``: it writes
a checkpoint and exits; it is ended by force only after a grace period), the same on Windows
and Linux; a child whose parent dies stops by itself; a finished run with the same dataset and
config is reused."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import events
from .config import TrainConfig

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("child.py")
FINISHED = "persona_run.json"  # marks a finished run (its key and summary)


class TrainingCancelled(RuntimeError):
    pass


class TrainingFailed(RuntimeError):
    pass


@dataclass
class RunOutcome:
    run_dir: Path
    lora_path: Path
    summary: dict
    cached: bool


def run_key(cfg: TrainConfig) -> str:
    """Same dataset content + same config (output_dir aside) = same key."""
    manifest = Path(cfg.dataset) / "manifest.json"
    dataset_id = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else cfg.dataset
    fields = set(cfg.model_fields) - {"output_dir"}
    return hashlib.sha256(f"{dataset_id}:{cfg.digest(fields)}".encode()).hexdigest()[:16]


def cached_run(run_dir: Path, key: str) -> RunOutcome | None:
    marker = run_dir / FINISHED
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text())
    lora = run_dir / "lora.safetensors"
    if data.get("key") == key and lora.is_file():
        return RunOutcome(run_dir, lora, data.get("summary", {}), True)
    return None


def train_in_subprocess(cfg: TrainConfig, on_event: Callable[[dict], None] | None = None,
                        should_cancel: Callable[[], bool] | None = None,
                        poll_seconds: float = 0.5, env: dict[str, str] | None = None) -> RunOutcome:
    """Train ``cfg`` in a child process (``env``: extra environment, e.g. the GPU it may use);
    a finished run with the same dataset and config is reused, an interrupted one resumed."""
    cfg.check_paths()
    key = run_key(cfg)
    run_dir = Path(cfg.output_dir)
    found = cached_run(run_dir, key)
    if found:
        log.info("reusing finished run %s (same dataset and config)", run_dir)
        return found
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = (run_dir / "config.json").is_file() and (run_dir / "checkpoints").is_dir() \
        and any((run_dir / "checkpoints").iterdir())
    if resume and json.loads((run_dir / "config.json").read_text()) != cfg.to_json():
        raise TrainingFailed(f"output_dir '{run_dir}' holds a different run; choose another name")
    config_file = run_dir / "requested_config.json"
    config_file.write_text(json.dumps(cfg.to_json(), indent=2))
    args = ["--resume", str(run_dir)] if resume else [str(config_file)]
    # a new interpreter (spawned, as on Windows: no fork), text over pipes in UTF-8 whatever the
    # system's code page, and its stdin kept open as the stop channel
    proc = subprocess.Popen([sys.executable, str(CHILD), *args, "--json-events", "--stop-on-stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace",
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **(env or {})})
    stderr_tail: list[str] = []

    def drain_stderr():
        for line in proc.stderr:
            stderr_tail.append(line)
            del stderr_tail[:-200]

    threading.Thread(target=drain_stderr, daemon=True).start()
    received: list[dict] = []

    def read_events():
        for line in proc.stdout:
            event = events.decode(line)
            if event is not None:
                received.append(event)

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    seen = 0
    cancelled = False
    try:
        while True:
            finished = proc.poll() is not None
            while seen < len(received):
                if on_event:
                    on_event(received[seen])  # may raise (e.g. the host's interrupt): see finally
                seen += 1
            if finished and not reader.is_alive():
                break
            if not cancelled and should_cancel and should_cancel():
                cancelled = True
                _stop(proc)
            reader.join(timeout=poll_seconds)
    finally:
        if proc.poll() is None:  # any way out of here ends the child (it checkpoints first)
            _stop(proc)
    proc.wait()
    if cancelled:
        raise TrainingCancelled("training was cancelled; run it again to resume from its last checkpoint")
    if proc.returncode != 0:
        tail = "".join(stderr_tail[-40:])
        raise TrainingFailed(f"training failed (exit code {proc.returncode}); its last output:\n{tail}")
    done = [e for e in received if e.get("event") == events.DONE]
    summary = done[-1] if done else {}
    lora = run_dir / "lora.safetensors"
    (run_dir / FINISHED).write_text(json.dumps({"key": key, "summary": summary}, indent=2))
    return RunOutcome(run_dir, lora, summary, False)


STOP_GRACE = 30.0  # seconds a child may take to finish its step, checkpoint and exit


def _stop(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Ask the child to stop (it saves a checkpoint at the end of its step and exits); end it
    by force only when it has not exited after ``grace`` seconds."""
    from .stop import request_stop

    request_stop(proc.stdin)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log.warning("training child %d did not stop within %.0f s; ending it", proc.pid, grace)
        proc.kill()
        proc.wait()
