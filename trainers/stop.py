"""How a training process is asked to stop, the same way on Windows and Linux: a line on its
standard input, polled by the loop between steps, never a signal.

The process that started the run (the Train node's server, a sweep, a script) keeps the pipe
to the child's standard input open for the whole run and writes ``stop`` to it on cancel. The
child's loop sees the request at the end of its step, writes a checkpoint and exits; the
parent ends it by force only after a grace period. When the parent itself dies, the pipe
closes: the child takes that as a stop request too (no orphan training on after its server),
and if it has not ended by itself within :data:`ORPHAN_GRACE` seconds (a model still loading,
say) it exits where it is.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)

STOP = "stop"
ORPHAN_GRACE = 30.0  # seconds an orphaned child may take to checkpoint and exit


class StopChannel:
    """Stop requests read from a text stream (the process's stdin) by a daemon thread."""

    def __init__(self, stream=None, orphan_grace: float = ORPHAN_GRACE):
        self.requested = threading.Event()
        self.parent_gone = threading.Event()
        self._stream = stream if stream is not None else sys.stdin
        self._grace = orphan_grace
        self._thread = threading.Thread(target=self._read, name="persona-stop-channel", daemon=True)
        self._thread.start()

    def __call__(self) -> bool:
        return self.requested.is_set()

    def _read(self) -> None:
        try:
            for line in self._stream:
                if line.strip() == STOP:
                    log.info("stop requested: the run checkpoints at the end of this step and exits")
                    self.requested.set()
        except (OSError, ValueError):
            pass
        # end of stream: whoever started the run is gone (or closed the pipe): stop too
        if not self.requested.is_set():
            log.warning("the process that started this training has gone: checkpointing and exiting")
        self.parent_gone.set()
        self.requested.set()
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline:
            time.sleep(0.5)
        log.error("training did not stop within %.0f s of its parent's end; exiting now", self._grace)
        os._exit(3)


def request_stop(stdin) -> None:
    """Ask a child started with a stop channel to stop (its stdin pipe, text mode)."""
    try:
        stdin.write(STOP + "\n")
        stdin.flush()
    except (OSError, ValueError):  # it has gone already
        pass
