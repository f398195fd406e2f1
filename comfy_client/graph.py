"""ComfyUI workflow formats: the UI format (nodes + links, ``"version": 0.4``, what the
canvas saves and loads in old and new frontends) and the API format (what ``POST /prompt``
takes). Converting needs the server's ``/object_info``: UI nodes store widget values by
position, API nodes by input name.
"""
from __future__ import annotations

from typing import Any

# widget input types; "COMBO" is a choice list declared the newer way (``["COMBO", {"options": [...]}]``,
# ComfyUI's typed node schema) rather than as the list itself
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


class WorkflowError(ValueError):
    pass


def _inputs(spec: dict) -> list[tuple[str, Any, dict]]:
    out = []
    for group in ("required", "optional"):
        for name, value in (spec.get("input", {}).get(group) or {}).items():
            opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            out.append((name, value[0], opts))
    return out


def _default(spec: dict, name: str):
    for n, kind, opts in _inputs(spec):
        if n == name:
            if "default" in opts:
                return opts["default"]
            choices = kind if isinstance(kind, list) else opts.get("options") if kind == "COMBO" else None
            return choices[0] if choices else None
    return None


def is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def is_widget_input(kind: Any, opts: dict) -> bool:
    """Drawn as a widget: a widget type not marked ``forceInput`` (which is a socket only)."""
    return is_widget(kind) and not opts.get("forceInput")


def widget_slots(spec: dict) -> list[tuple[str, str]]:
    """The positions of ``widgets_values`` as (input name, role): role 'value' for the
    input's own value, 'control' and 'upload' for the extra values the frontend stores after
    some widgets (the seed's control-after-generate, the image upload button)."""
    slots: list[tuple[str, str]] = []
    for name, kind, opts in _inputs(spec):
        if not is_widget_input(kind, opts):
            continue
        slots.append((name, "value"))
        if (kind == "INT" and name in ("seed", "noise_seed")) or opts.get("control_after_generate"):
            slots.append((name, "control"))
        if opts.get("image_upload"):
            slots.append((name, "upload"))
    return slots


EXTRA_VALUES = {"control": "fixed", "upload": "image"}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """UI-format workflow -> API-format prompt."""
    links = {link[0]: link for link in ui.get("links", [])}
    api = {}
    for node in ui.get("nodes", []):
        if node.get("mode", 0) == 2:  # muted
            continue
        kind = node["type"]
        if node.get("mode", 0) == 4:
            raise WorkflowError(f"node {node['id']} ({kind}) is bypassed; un-bypass or remove it")
        if kind not in object_info:
            raise WorkflowError(f"node {node['id']}: type '{kind}' is not installed on the server")
        spec = object_info[kind]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        for (name, role), value in zip(widget_slots(spec), values):
            if role == "value":
                inputs[name] = value
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            link = links.get(inp["link"])
            if link is None:
                raise WorkflowError(f"node {node['id']}: input '{inp['name']}' uses missing link {inp['link']}")
            inputs[inp["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                "_meta": {"title": node.get("title") or spec.get("display_name", kind)}}
    return api


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str, seen: tuple = ()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in seen:
            raise WorkflowError(f"the graph has a cycle through node {nid}")
        parents = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2
                   and isinstance(v[0], str)]
        depth[nid] = 1 + max((visit(p, seen + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


# Where ComfyUI keeps the files that Persona's model widgets name: the frontend's
# missing-models panel reads each node's ``properties.models`` ({name, directory}) to tell the
# user which folder a missing file belongs in (ComfyUI's own loaders are known to it already).
MODEL_WIDGETS = {"base_model": "checkpoints", "clip_l": "text_encoders", "t5": "text_encoders", "vae": "vae",
                 "llm": "text_encoders", "training_adapter": "loras"}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
DIFFUSION_MODELS = "diffusion_models/"  # how Persona lists a bare denoiser file (FLUX, Z-Image)


def model_files(kind: str, inputs: dict) -> list[dict]:
    """The model files a Persona node's widgets name, with ComfyUI's folder of each."""
    if not kind.startswith("Persona"):
        return []
    found = []
    for name, directory in MODEL_WIDGETS.items():
        value = inputs.get(name)
        if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
            if value.startswith(DIFFUSION_MODELS):
                directory = "diffusion_models"
            found.append({"name": value, "directory": directory})
    return found


def api_to_ui(api: dict, object_info: dict) -> dict:
    """API-format prompt -> UI-format workflow, laid out by ``layout`` (a titled group per
    pipeline stage, nodes given room for their rendered size)."""
    depth = _depths(api)
    order = sorted(api, key=lambda n: (depth[n], int(n)))
    rows: dict[int, int] = {}
    nodes, links = [], []
    by_id = {}
    for position, nid in enumerate(order):
        entry = api[nid]
        kind = entry["class_type"]
        if kind not in object_info:
            raise WorkflowError(f"node {nid}: type '{kind}' is not installed on the server")
        spec = object_info[kind]
        row = rows.get(depth[nid], 0)
        rows[depth[nid]] = row + 1
        node = {"id": int(nid), "type": kind, "pos": [60 + 420 * depth[nid], 60 + 380 * row],
                "size": [360, 260], "flags": {}, "order": position, "mode": 0,
                "inputs": [], "outputs": [], "properties": {"Node name for S&R": kind},
                "widgets_values": []}
        if entry.get("_meta", {}).get("title"):
            node["title"] = entry["_meta"]["title"]
        files = model_files(kind, entry["inputs"])
        if files:
            node["properties"]["models"] = files
        for i, (otype, oname) in enumerate(zip(spec["output"], spec["output_name"])):
            node["outputs"].append({"name": oname, "type": otype if isinstance(otype, str) else "COMBO",
                                    "links": [], "slot_index": i})
        for name, role in widget_slots(spec):
            if role != "value":
                node["widgets_values"].append(EXTRA_VALUES[role])
                continue
            if name not in entry["inputs"]:
                default = _default(spec, name)
                if default is None:
                    raise WorkflowError(f"node {nid} ({kind}): widget '{name}' has no value")
                value = default
            else:
                value = entry["inputs"][name]
            node["widgets_values"].append(None if isinstance(value, list) and len(value) == 2
                                          and isinstance(value[0], str) else value)
        nodes.append(node)
        by_id[nid] = node
    for nid in order:
        spec = object_info[api[nid]["class_type"]]
        for name, kind, opts in _inputs(spec):
            value = api[nid]["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            if not linked and is_widget_input(kind, opts):
                continue
            entry = {"name": name, "type": kind if isinstance(kind, str) else "COMBO", "link": None}
            if is_widget_input(kind, opts):
                entry["widget"] = {"name": name}
            if linked:
                src, slot = value
                if src not in by_id:
                    raise WorkflowError(f"node {nid}: input '{name}' comes from missing node {src}")
                link_id = len(links) + 1
                src_out = by_id[src]["outputs"][slot]
                links.append([link_id, int(src), slot, int(nid), len(by_id[nid]["inputs"]), src_out["type"]])
                src_out["links"].append(link_id)
                entry["link"] = link_id
            by_id[nid]["inputs"].append(entry)
    from .layout import place

    groups = place(nodes, api, object_info, depth)
    workflow = {"last_node_id": max(int(n) for n in api), "last_link_id": len(links), "nodes": nodes,
                "links": links, "groups": groups, "config": {}, "extra": {}, "version": 0.4}
    files = [f for n in nodes for f in n["properties"].get("models", [])]
    if files:
        workflow["models"] = [dict(t) for t in dict.fromkeys(tuple(sorted(f.items())) for f in files)]
    return workflow
