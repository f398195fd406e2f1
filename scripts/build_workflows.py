"""Regenerate the UI-format twin of every shipped API-format workflow, using the node
definitions of a real ComfyUI server with this pack installed (started for the purpose).

    .venv/bin/python scripts/build_workflows.py
"""
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_server import ComfyServer  # noqa: E402

from comfyui_persona.comfy_client.graph import api_to_ui  # noqa: E402


def main() -> None:
    server = ComfyServer.create(Path(tempfile.mkdtemp()), "build-workflows")
    server.start()
    try:
        info = server.get("/object_info")
    finally:
        server.stop()
    for api_file in sorted((REPO / "workflows" / "api").glob("*.api.json")):
        ui = api_to_ui(json.loads(api_file.read_text()), info)
        target = REPO / "workflows" / api_file.name.replace(".api.json", ".json")
        target.write_text(json.dumps(ui, indent=2) + "\n")
        print(f"wrote {target.relative_to(REPO)}")


if __name__ == "__main__":
    main()
