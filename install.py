"""Run by ComfyUI-Manager after cloning: install the pack's requirements into ComfyUI's
Python without touching torch, then facenet-pytorch and invisible-watermark with --no-deps
(facenet-pytorch's metadata pins torch<2.3, which would downgrade a working ComfyUI install;
invisible-watermark's asks for opencv-python beside the opencv-python-headless installed
here; the code of both runs with what is installed).
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pip(*args: str) -> None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    pip("-r", str(HERE / "requirements.txt"))
    pip("--no-deps", "facenet-pytorch==2.6.0", "invisible-watermark==0.2.0")
