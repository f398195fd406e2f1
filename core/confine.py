"""Where a path that comes from a queued graph may lead: one rule, at every boundary.

A ComfyUI server takes graphs from whoever can reach it. Every path that a graph's values
yield (a widget, a link, a custom-type value, or a field read from a file the graph names:
consent YAML, sweep YAML, captions, dataset manifests) is resolved, symlinks included, per
folder and per file, and must lie inside one of the allowed roots: ComfyUI's input, output and
models folders (Persona's own folder is ``output/persona``). The node layer sets the roots for
the time a node runs (:func:`confined_to`); headless code (the CLI, the library) runs
unconfined, and every check below passes its path through as given.

A refused path is refused before anything looks at it, so an answer never tells whether
something outside exists; messages name paths by their root's label (``input/persona/photos``),
never by their absolute location on the server (:func:`shown`, :func:`scrub`).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

MAX_PATH = 1024


class PathRefused(ValueError):
    """A path from an untrusted value that leads outside the allowed roots."""


@dataclass(frozen=True)
class Roots:
    named: tuple[tuple[str, Path], ...]  # (label, resolved folder), e.g. ("input", /srv/ComfyUI/input)
    extra_names: tuple[tuple[str, str], ...] = ()  # other absolute prefixes a message may show

    def of(self, path: Path) -> tuple[str, Path] | None:
        for label, root in self.named:
            if path == root or root in path.parents:
                return label, root
        return None


_ACTIVE: ContextVar[Roots | None] = ContextVar("persona_confinement", default=None)


def active() -> Roots | None:
    """The roots in force (None: headless, nothing confined)."""
    return _ACTIVE.get()


@contextmanager
def confined_to(named: dict[str, Path], extra_names: dict[str, str] | None = None):
    """Confine every check made inside the block to the folders of ``named`` (label -> folder);
    ``extra_names``: other absolute locations (the ComfyUI folder, the pack) that messages name
    by a label instead."""
    roots = Roots(tuple((label, Path(p).resolve()) for label, p in named.items()),
                  tuple(sorted(((str(k), v) for k, v in (extra_names or {}).items()), key=lambda kv: -len(kv[0]))))
    token = _ACTIVE.set(roots)
    try:
        yield roots
    finally:
        _ACTIVE.reset(token)


def _quoted(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def check_text(value: str, field: str) -> str:
    """The plain checks of a path typed into a graph (before anything resolves it)."""
    text = str(value).strip()
    if "\x00" in text:
        raise PathRefused(f"{field}: the path contains a NUL byte")
    if len(text) > MAX_PATH:
        raise PathRefused(f"{field}: the path is {len(text)} characters long (at most {MAX_PATH})")
    return text


def relative(value: str, field: str, base: Path) -> Path:
    """A path typed into a graph, relative to ``base`` (one of the roots): Windows separators
    read as separators; absolute paths and ``~`` refused; the result confined (:func:`confine`)."""
    text = check_text(value, field).replace("\\", "/")
    roots = active()
    if roots is None:
        p = Path(os.path.expanduser(text))
        return p if p.is_absolute() else base / p
    if text.startswith("~") or Path(text).is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise PathRefused(f"{field}: {_quoted(text)} is an absolute path; give a path inside ComfyUI's "
                          f"{' / '.join(label for label, _ in roots.named)} folders")
    return confine(base / text, field, _quoted(text))


def confine(path: str | Path, field: str, what: str | None = None) -> Path:
    """``path`` resolved (symlinks included); refused unless it lies inside the roots in force.
    Headless: ``path`` as given."""
    roots = active()
    path = Path(path)
    if roots is None:
        return path
    full = path.resolve()
    if roots.of(full) is None:
        raise PathRefused(f"{field}: {what or _quoted(shown(path))} leads outside ComfyUI's "
                          f"{', '.join(label for label, _ in roots.named)} folders")
    return full


def allowed(path: str | Path) -> bool:
    """Whether ``path`` (resolved, symlinks included) may be read (always, headless): per-file
    checks inside a folder that was confined as a whole."""
    roots = active()
    return roots is None or roots.of(Path(path).resolve()) is not None


def shown(path: str | Path) -> str:
    """How a message names ``path``: relative to its root's label inside ComfyUI
    (``output/persona/datasets/x``), its last part when it lies elsewhere; as given headless."""
    roots = active()
    if roots is None:
        return str(path)
    p = Path(path)
    for candidate in (p, p.resolve() if p.is_absolute() else p):
        found = roots.of(candidate) if candidate.is_absolute() else None
        if found is not None:
            label, root = found
            rest = candidate.relative_to(root).as_posix()
            return label if rest == "." else f"{label}/{rest}"
        for label, root in roots.named:  # the unresolved spelling of a root
            try:
                rest = candidate.relative_to(root).as_posix()
            except ValueError:
                continue
            return label if rest == "." else f"{label}/{rest}"
    return p.name if p.is_absolute() else str(p)


def scrub(text: str) -> str:
    """``text`` with every absolute location of the roots (and of the extra names) replaced by
    its label: what a message may say about the server."""
    roots = active()
    if roots is None:
        return text
    pairs = [(str(root), label) for label, root in roots.named] + list(roots.extra_names)
    for prefix, label in sorted(pairs, key=lambda kv: -len(kv[0])):
        if prefix and prefix not in ("/", "."):
            text = text.replace(prefix, label)
    return text
