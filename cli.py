"""The ``persona`` command line. Each subcommand is a thin wrapper over a headless function.

Only subcommands that work are listed; later stages add theirs here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("comfyui_persona")


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="photo", file=sys.stderr)

    def update(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(name[:40])
        bar.refresh()

    return bar, update


def cmd_prepare(args: argparse.Namespace) -> int:
    from .config_base import ConfigError
    from .faces.config import PrepareConfig
    from .faces.dataset import prepare_dataset
    from .textable import text_table

    try:
        cfg = PrepareConfig.from_file(args.config) if args.config else PrepareConfig()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar, update = _progress_bar("prepare")
    try:
        result = prepare_dataset(args.photos_dir, args.dataset_dir, cfg, progress=update)
    except (FileNotFoundError, ValueError) as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    print(text_table(["photo", "status", "caption or reason"], result.summary_rows()))
    rate = len(result.entries) / result.seconds if result.seconds > 0 else 0.0
    print(f"\n{len(result.accepted)} accepted, {len(result.rejected)} rejected; "
          f"{result.processed} processed, {result.reused} unchanged"
          + (f", {len(result.removed)} removed" if result.removed else "")
          + f" in {result.seconds:.1f} s ({rate:.1f} photos/s)\ndataset: {result.dataset_dir}")
    return 0 if result.accepted else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _summary, text = run_demo(Path(args.out), quick=args.quick)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona", description="Personalized image generation: prepare, train, generate, measure.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="photos folder -> aligned, filtered, captioned dataset")
    p.add_argument("photos_dir", help="folder of 3-20 photos of the subject (never modified)")
    p.add_argument("dataset_dir", help="dataset folder to create or update")
    p.add_argument("--config", help="PrepareConfig as JSON or YAML")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded sample faces")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="shortest settings (used by the tests)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
