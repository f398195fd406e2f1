"""ComfyUI adapters: thin node classes that parse widgets, build a config, call one headless
function and return a tuple. The only package that talks to ComfyUI, and only through
``host``.

May import: every package of the pack except ``app``.

Each module lists its nodes in ``NODES`` (id -> (class, display name)). Node ids are
stable: a changed node gets a new id (``...V2``) and the old one keeps working.
"""
from . import face_nodes, generate_nodes, metrics_nodes, plan_nodes, save_nodes, study_nodes, train_nodes

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _module in (face_nodes, train_nodes, study_nodes, plan_nodes, generate_nodes, save_nodes, metrics_nodes):
    for _id, (_cls, _title) in _module.NODES.items():
        NODE_CLASS_MAPPINGS[_id] = _cls
        NODE_DISPLAY_NAME_MAPPINGS[_id] = _title
