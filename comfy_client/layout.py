"""Where the nodes of a UI-format workflow sit: one titled group per pipeline stage, the stages
left to right, inside a stage columns by graph depth, and every node given room for its real
rendered size (estimated from its sockets and widgets, with a margin for the larger widgets
of current frontends), so that no two nodes overlap in the 2024 or the current frontend."""
from __future__ import annotations

STAGES = {  # node category -> (order, group title, colour)
    "Persona/faces": (0, "1 · Photos and dataset", "#3f789e"),
    "Persona/train": (1, "2 · Training", "#8A8"),
    "Persona/generate": (2, "3 · Generation", "#b58b2a"),
    "Persona/enhance": (3, "4 · Enhancement", "#a1309b"),
    "Persona/metrics": (4, "5 · Measurement", "#88A"),
}
TITLE = 30  # LiteGraph's title bar, drawn above a node's pos
SLOT = 22
WIDGET = 30
MULTILINE = 110
IMAGE = 300  # nodes that show an image (previews, savers, Load Image)
WIDTH = 380
GAP_X, GAP_Y = 70, 70
GROUP_PAD, GROUP_TITLE = 24, 56
SHOWS_IMAGE = {"PreviewImage", "SaveImage", "LoadImage", "PersonaSaveImage"}


def node_size(node: dict, spec: dict) -> list[int]:
    """Room for a node as frontends draw it: title, one row per socket pair, the widgets."""
    sockets = max(len(node["inputs"]), len(node["outputs"]))
    widgets = [i for group in ("required", "optional") for i in (spec.get("input", {}).get(group) or {}).items()]
    n_widgets = sum(1 for _, v in widgets if isinstance(v[0], list) or v[0] in ("INT", "FLOAT", "STRING", "BOOLEAN",
                                                                                  "COMBO"))
    multiline = sum(1 for _, v in widgets if v[0] == "STRING" and len(v) > 1 and isinstance(v[1], dict)
                    and v[1].get("multiline"))
    height = 10 + SLOT * sockets + WIDGET * n_widgets + MULTILINE * multiline
    if node["type"] in SHOWS_IMAGE:
        height += IMAGE
    return [WIDTH, height]


def stages(api: dict, object_info: dict) -> dict[str, int]:
    """Each node's stage: its category's, or for a core node (loader, prompt, saver) the
    earliest stage of the nodes it feeds, else of the node that feeds it."""
    stage = {}
    for nid, entry in api.items():
        category = object_info[entry["class_type"]].get("category", "")
        if category in STAGES:
            stage[nid] = STAGES[category][0]
    feeds: dict[str, set[str]] = {}
    fed_by: dict[str, set[str]] = {}
    for nid, entry in api.items():
        for value in entry["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                feeds.setdefault(value[0], set()).add(nid)
                fed_by.setdefault(nid, set()).add(value[0])
    for _ in range(len(api)):  # settle chains of core nodes
        for nid in api:
            if nid in stage:
                continue
            known = [stage[n] for n in feeds.get(nid, ()) if n in stage]
            known = known or [stage[n] for n in fed_by.get(nid, ()) if n in stage]
            if known:
                stage[nid] = min(known)
    return {nid: stage.get(nid, 0) for nid in api}


def place(nodes: list[dict], api: dict, object_info: dict, depth: dict[str, int]) -> list[dict]:
    """Set every node's pos and size; return the groups (one per stage present)."""
    by_id = {str(n["id"]): n for n in nodes}
    stage = stages(api, object_info)
    groups = []
    x0 = 60
    for order in sorted(set(stage.values())):
        members = [nid for nid in api if stage[nid] == order]
        columns = sorted({depth[nid] for nid in members})
        x = x0
        bottom = 0
        for column in columns:
            y = GROUP_TITLE + 60 + TITLE
            ids = sorted((nid for nid in members if depth[nid] == column), key=int)
            width = 0
            for nid in ids:
                node = by_id[nid]
                node["size"] = node_size(node, object_info[node["type"]])
                node["pos"] = [x, y]
                y += node["size"][1] + TITLE + GAP_Y
                width = max(width, node["size"][0])
            bottom = max(bottom, y - GAP_Y)
            x += width + GAP_X
        title, color = next((t, c) for o, t, c in STAGES.values() if o == order)
        left, top = x0 - GROUP_PAD, 60
        groups.append({"title": title, "bounding": [left, top, (x - GAP_X) - left + GROUP_PAD,
                                                   bottom - top + GROUP_PAD],
                       "color": color, "font_size": 24, "flags": {}})
        x0 = x - GAP_X + 2 * GROUP_PAD + 40
    return groups
