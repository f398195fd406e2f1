"""A small client of a running ComfyUI: submit a workflow (UI or API format), follow its
progress over the websocket, download its output images and its history."""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .graph import ui_to_api
from ..core.deps import require

log = logging.getLogger(__name__)


class ServerGone(ConnectionError):
    """The server could not be reached, or went away while the prompt ran."""


class PromptRejected(ValueError):
    """The server's validation refused the prompt; ``node_errors`` says where."""

    def __init__(self, body: dict):
        self.body = body
        self.node_errors = body.get("node_errors") or {}
        lines = [body.get("error", {}).get("message", "the prompt was refused")]
        for nid, err in self.node_errors.items():
            for e in err.get("errors", []):
                lines.append(f"  node {nid} ({err.get('class_type')}): {e.get('message')}: {e.get('details')}")
        super().__init__("\n".join(lines))


class PromptFailed(RuntimeError):
    pass


@dataclass
class QueueResult:
    prompt_id: str
    outputs: dict
    files: list[Path] = field(default_factory=list)


class ComfyClient:
    def __init__(self, server: str = "http://127.0.0.1:8188", timeout: float = 30.0):
        self.server = server.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.server + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code == 400 and path == "/prompt":
                raise PromptRejected(json.loads(body or b"{}")) from None
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise ServerGone(f"ComfyUI at {self.server} cannot be reached ({exc})") from None

    def object_info(self) -> dict:
        return json.loads(self._request("/object_info"))

    def to_api(self, workflow: dict) -> dict:
        if "nodes" in workflow and "links" in workflow:
            return ui_to_api(workflow, self.object_info())
        return workflow

    def run(self, prompt: dict, out_dir: Path | None = None,
            on_event: Callable[[str, dict], None] | None = None) -> QueueResult:
        websocket = require("websocket", "persona queue")
        ws_url = self.server.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=self.timeout)
        except (OSError, websocket.WebSocketException) as exc:
            raise ServerGone(f"ComfyUI at {self.server} cannot be reached ({exc})") from None
        try:
            body = json.loads(self._request("/prompt", {"prompt": prompt, "client_id": self.client_id}))
            prompt_id = body["prompt_id"]
            if body.get("node_errors"):
                # Some ComfyUI releases queue the outputs that did validate and list the rest
                # here: the workflow as given was refused, so its queued part is withdrawn.
                self._withdraw(prompt_id)
                raise PromptRejected({"error": {"message": "some nodes failed validation"},
                                      "node_errors": body["node_errors"]})
            self._follow(ws, prompt_id, on_event)
        finally:
            ws.close()
        history = json.loads(self._request(f"/history/{prompt_id}"))[prompt_id]
        result = QueueResult(prompt_id, history.get("outputs", {}))
        if out_dir is not None:
            result.files = self.download(history, Path(out_dir))
        return result

    def _withdraw(self, prompt_id: str) -> None:
        try:
            self._request("/queue", {"delete": [prompt_id]})  # never /interrupt: it may be another's prompt
        except (ServerGone, urllib.error.HTTPError) as exc:
            log.warning("could not withdraw prompt %s: %s", prompt_id, exc)

    def _follow(self, ws, prompt_id: str, on_event) -> None:
        import websocket

        while True:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as exc:
                raise ServerGone(f"ComfyUI at {self.server} went away while prompt {prompt_id} was running "
                                 f"({type(exc).__name__})") from None
            if not isinstance(raw, str) or not raw:
                if raw == "" or raw is None:
                    raise ServerGone(f"ComfyUI at {self.server} closed the connection while prompt "
                                     f"{prompt_id} was running")
                continue  # binary preview frames
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if on_event:
                on_event(kind, data)
            if kind == "execution_error":
                raise PromptFailed(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                                   f"{data.get('exception_message', '').strip()}")
            if kind == "execution_interrupted":
                raise PromptFailed(f"prompt {prompt_id} was interrupted")
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return

    def download(self, history: dict, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for node_id, output in history.get("outputs", {}).items():
            for image in output.get("images", []):
                query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                                "type": image.get("type", "output")})
                target = out_dir / f"{node_id}_{image['filename']}"
                target.write_bytes(self._request(f"/view?{query}"))
                files.append(target)
        (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        files.append(out_dir / "history.json")
        return files


def apply_overrides(prompt: dict, overrides: list[str]) -> dict:
    """``NODE.INPUT=VALUE`` (VALUE read as JSON when it parses, else as a string)."""
    for item in overrides:
        target, sep, raw = item.partition("=")
        node, dot, name = target.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set: expected NODE.INPUT=VALUE, got '{item}'")
        if node not in prompt:
            raise ValueError(f"--set: the workflow has no node '{node}' (nodes: {', '.join(sorted(prompt))})")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prompt[node]["inputs"][name] = value
    return prompt
