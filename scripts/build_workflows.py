"""Regenerate the UI-format twin of every shipped API-format workflow (``workflows/api/``),
using the node definitions of a real ComfyUI server with this pack installed (started for the
purpose), and its template-browser thumbnail (``workflows/<title>.jpg``: the graph as the
current frontend draws it, in headless Chromium).

    .venv/bin/python scripts/build_workflows.py
"""
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_server import NEWEST, ComfyServer, HostUnavailable  # noqa: E402

from comfyui_persona.comfy_client.graph import api_to_ui  # noqa: E402

THUMBNAIL_WIDTH = 640


def main() -> None:
    try:
        server = ComfyServer.create(Path(tempfile.mkdtemp()), "build-workflows", host=NEWEST)
    except HostUnavailable as exc:  # the 2024 host still gives the node definitions
        print(f"current ComfyUI not available ({exc}); thumbnails are drawn by the 2024 frontend")
        server = ComfyServer.create(Path(tempfile.mkdtemp()), "build-workflows")
    server.start()
    try:
        info = server.get("/object_info")
        for api_file in sorted((REPO / "workflows" / "api").glob("*.api.json")):
            ui = api_to_ui(json.loads(api_file.read_text()), info)
            target = REPO / "workflows" / api_file.name.replace(".api.json", ".json")
            target.write_text(json.dumps(ui, indent=2) + "\n")
            print(f"wrote {target.relative_to(REPO)}")
            thumbnail(server, ui, target.with_suffix(".jpg"))
    finally:
        server.stop()


def thumbnail(server: ComfyServer, ui: dict, path: Path) -> None:
    from PIL import Image

    from browser_helpers import run_graph

    shot = run_graph(server.url, ui, f"thumbnail-{path.stem}")["screenshot"]
    with Image.open(shot) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH))
        im.save(path, quality=85)
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
