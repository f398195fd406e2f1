"""What the tests build once into the test cache and share: test models (per version of the
code that builds them) and trained or prepared artifacts (per version of the pack's code),
each under a lock of its own that the other pytest-xdist worker waits on, so that nothing is
built twice; builds that hold the full-size SD1.5 model in memory (``large``) also take one
shared lock, so two of them never run at once."""
from __future__ import annotations

import contextlib
from pathlib import Path

from comfy_server import CACHE, REPO


def _builder_digest() -> str:
    """A short hash of the code that builds the test models: a changed builder (architecture,
    family, tokenizers, the shipped face weights' record, which every retraining rewrites)
    builds new ones; unchanged, the test cache's are reused."""
    import hashlib

    files = [REPO / "models" / n for n in ("architectures.py", "build.py", "tokenizers.py", "tiny_faces.py",
                                           "weights/tiny_faces/tiny_faces.json")]
    files += sorted((REPO / "models" / "families").rglob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()[:10]


BUILDER = _builder_digest()


def _code_digest() -> str:
    """A short hash of the pack's code (tests aside): what a trained or prepared test artifact
    depends on."""
    import hashlib

    digest = hashlib.sha256()
    for f in sorted(REPO.rglob("*.py")):
        rel = f.relative_to(REPO)
        if rel.parts[0] in ("tests", "bench", "scripts", "app", "nodes") or rel.parts[0].startswith("."):
            continue
        digest.update(str(rel).encode() + f.read_bytes())
    return digest.hexdigest()[:10]


CODE = _code_digest()


def built_once(name: str, build, large: bool = False) -> Path:
    """``build(folder)`` run once per code version into the test cache (under its build lock,
    so the other worker waits and then reuses it); returns the folder."""
    import shutil

    target = CACHE / "built" / f"{name}-{CODE}"
    if (target / ".complete").is_file():
        return target
    with heavy_build(name, large=large):
        if not (target / ".complete").is_file():
            for old in target.parent.glob(f"{name}-*"):
                if len(old.name) == len(target.name):
                    shutil.rmtree(old, ignore_errors=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            build(tmp)
            (tmp / ".complete").write_text(name)
            tmp.rename(target)
    return target


def model_dir(name: str):
    """Where the test model ``name`` is built once (per builder version) in the test cache;
    the builds of earlier versions are removed."""
    import shutil

    current = CACHE / "models" / f"{name}-{BUILDER}"
    for old in current.parent.glob(f"{name}-*"):
        if old != current and old.name[len(name) + 1:].isalnum() and len(old.name) == len(current.name):
            shutil.rmtree(old, ignore_errors=True)
    return current


@contextlib.contextmanager
def large_memory():
    """Held while a worker holds the full-size SD1.5 model (or two) in its own memory: the
    other worker's large builds and large tests wait, so the two never need it at once; on
    taking it, every running test server unloads the models it kept from its last prompt."""
    from filelock import FileLock

    from comfy_server import free_all_servers

    locks = CACHE / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / "large-build.lock")):
        free_all_servers()  # the other worker's server may still hold the last large model it ran
        yield


@contextlib.contextmanager
def heavy_build(name: str, large: bool = False):
    """Held while a worker builds ``name`` into the test cache: the other worker waits for the
    same build (then finds it done) but builds something else meanwhile; a ``large`` build
    (the full-size SD1.5 model in memory) also waits for any other large one, so the two
    workers never hold two of them at once in 24 GB."""
    from filelock import FileLock

    locks = CACHE / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"build-{name}.lock")):
        if not large:
            yield
            return
        with large_memory():
            yield


