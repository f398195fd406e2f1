"""The layout stays legible: imports run only downward through the layers below, nothing
imports the CLI, only ``nodes/host.py`` (and the one model-folder probe ``core/host.py``)
touches ComfyUI, there is no import cycle, and model families are asked, not branched on.

Checked on the import graph of every module, parsed with ``ast`` (nothing is imported)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = "comfyui_persona"
NOT_CODE = {"tests", "bench", "scripts", "web", "workflows", "docs", "configs", "node_modules", "runs",
            "test-artifacts"}
# lower numbers are lower layers; a module may import its own package and lower layers
LAYERS = {"core": 0, "models": 1, "faces": 1, "comfy_client": 1, "provenance": 1, "trainers": 2, "metrics": 2,
          "generation": 3, "studies": 3, "nodes": 4, "app": 4}
# same-layer packages that may use each other, with the reason
SIDEWAYS = {("trainers", "faces"), ("metrics", "faces")}  # training data and identity scores are faces'
COMFY_MODULES = {"folder_paths", "comfy", "comfy_extras", "server", "execution", "nodes"}
COMFY_DOORS = {f"{PKG}.nodes.host", f"{PKG}.core.host"}


def pack_modules(root: Path = REPO) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_CODE or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([PKG, *parts])] = path
    return found


def import_graph(modules: dict[str, Path]):
    """(edges between pack modules, ComfyUI imports by module)."""
    edges: dict[str, set[str]] = {}
    comfy: dict[str, set[str]] = {}
    for name, path in modules.items():
        base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                    if target.split(".")[0] in COMFY_MODULES:
                        comfy.setdefault(name, set()).add(target)
                for cand in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if cand in modules:
                        out.add(cand)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in COMFY_MODULES:
                        comfy.setdefault(name, set()).add(a.name)
                    if a.name in modules:
                        out.add(a.name)
        out.discard(name)
        edges[name] = out
    return edges, comfy


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(edges) -> list[str]:
    bad = []
    for src, targets in edges.items():
        a = package_of(src)
        for dst in targets:
            b = package_of(dst)
            if a is None or b is None or a == b:
                continue
            if b == "app":
                bad.append(f"{src} -> {dst} (nothing imports the CLI / app)")
            elif LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) not in SIDEWAYS):
                bad.append(f"{src} -> {dst} ({a} is layer {LAYERS[a]}, {b} layer {LAYERS[b]})")
    return sorted(bad)


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), leaving out a package
    __init__ that re-exports its own children."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    parent_child = lambda c: all(any(x.startswith(y + ".") or y.startswith(x + ".") for y in c if y != x) for x in c)  # noqa: E731
    return [c for c in comps if not parent_child(c)]


def test_imports_run_only_downward_and_never_in_circles():
    edges, comfy = import_graph(pack_modules())
    assert len(edges) > 60  # the whole pack was parsed
    assert upward_imports(edges) == []
    assert cycles(edges) == []
    outside = {m: sorted(t) for m, t in comfy.items() if m not in COMFY_DOORS}
    assert outside == {}, f"ComfyUI imported outside nodes/host.py and the core/host.py probe: {outside}"
    assert {m for m in comfy} <= COMFY_DOORS


def test_the_root_holds_only_registration_and_install():
    loose = sorted(p.name for p in REPO.glob("*.py") if p.name not in ("__init__.py", "install.py"))
    assert loose == []
    for folder in sorted({p.relative_to(REPO).parts[0] for p in pack_modules().values() if p.parent != REPO}):
        init = REPO / folder / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) if init.is_file() else None
        assert doc and len(doc) > 80, f"{folder}/ needs a docstring saying what lives there"
        if folder in LAYERS:
            assert "May import" in doc, f"{folder}/__init__.py should say what it may import"


def test_model_families_are_asked_not_branched_on():
    branch = re.compile(r"""family\s*(==|!=)\s*["']|["'](sd15|sdxl|flux)["']\s*(==|!=)\s*\w*family""")
    found = [f"{m}: {line.strip()}" for m, path in pack_modules().items() if ".families" not in m
             for line in path.read_text(encoding="utf-8").splitlines() if branch.search(line)]
    assert found == []


def test_the_checker_sees_a_cycle_an_upward_import_and_comfyui_outside_nodes(tmp_path):
    """The checks above fail when the layout breaks (on a small pack written here)."""
    for rel, text in {"core/__init__.py": "", "core/a.py": "from ..trainers import b\n",
                      "trainers/__init__.py": "", "trainers/b.py": "from ..core import a\nimport folder_paths\n",
                      "trainers/c.py": "from ..app import cli\n", "app/__init__.py": "", "app/cli.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges, comfy = import_graph(pack_modules(tmp_path))
    assert cycles(edges) == [[f"{PKG}.core.a", f"{PKG}.trainers.b"]]
    bad = upward_imports(edges)
    assert any("core.a -> comfyui_persona.trainers.b" in b for b in bad)
    assert any("app" in b and "trainers.c" in b for b in bad)
    assert comfy == {f"{PKG}.trainers.b": {"folder_paths"}}


@pytest.mark.parametrize("module", ["trainers.entry", "trainers.child", "trainers.__main__"])
def test_training_entries_do_not_go_through_the_cli(module):
    edges, _ = import_graph(pack_modules())
    assert not any(".app" in t for t in edges[f"{PKG}.{module}"])
