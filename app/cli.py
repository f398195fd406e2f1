"""The ``persona`` command line. Each subcommand is a thin wrapper over a headless function.

Only subcommands that work are listed; later stages add theirs here.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("comfyui_persona")


def _progress_lines(desc: str, unit: str):
    """A progress line on stderr for each new count (redrawn in place on a terminal):
    ``update(done, total, name)`` and ``close()``."""
    last = {"done": None}
    tty = sys.stderr.isatty()

    def update(done: int, total: int, name: str) -> None:
        if done == last["done"]:
            return
        last["done"] = done
        line = f"{desc}: {done}/{total} {unit}s" + (f" ({name[:40]})" if name else "")
        sys.stderr.write(f"\r{line:<72}" if tty else line + "\n")
        sys.stderr.flush()

    def close() -> None:
        if tty and last["done"] is not None:
            sys.stderr.write("\n")

    return update, close


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..core.config import ConfigError
    from ..faces.config import PrepareConfig
    from ..faces.consent import read_consent
    from ..faces.dataset import prepare_dataset
    from ..core.tables import text_table

    try:
        cfg = PrepareConfig.from_file(args.config) if args.config else PrepareConfig()
        if args.holdout is not None:
            held = [h.strip() for h in args.holdout.split(",") if h.strip()]
            cfg = PrepareConfig.from_dict({**cfg.to_json(), "holdout": int(held[0]) if len(held) == 1
                                           and held[0].isdigit() else held}, source="--holdout")
        consent = read_consent(args.consent) if args.consent else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    update, close = _progress_lines("prepare", "photo")
    try:
        result = prepare_dataset(args.photos_dir, args.dataset_dir, cfg, progress=update, consent=consent)
    except (FileNotFoundError, ValueError) as exc:
        close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    close()
    print(text_table(["photo", "status", "caption or reason"], result.summary_rows()))
    rate = len(result.entries) / result.seconds if result.seconds > 0 else 0.0
    print(f"\n{len(result.accepted)} accepted, {len(result.rejected)} rejected; "
          f"{result.processed} processed, {result.reused} unchanged"
          + (f", {len(result.removed)} removed" if result.removed else "")
          + f" in {result.seconds:.1f} s ({rate:.1f} photos/s)\ndataset: {result.dataset_dir}")
    return 0 if result.accepted else 1


def cmd_train(args: argparse.Namespace) -> int:
    from ..trainers.entry import run_from_args

    return run_from_args(args)


def _subject_photos(specs: list[str], load_folder) -> tuple[dict, list]:
    """``--subject NAME=FOLDER`` values -> ({name: photos}, unreadable files)."""
    subjects, errors = {}, []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--subject: NAME=FOLDER expected, got '{spec}'")
        photos, skipped = load_folder(folder.strip(), max_side=1024)
        if not photos:
            raise ValueError(f"--subject {name.strip()}: no readable photo in '{folder.strip()}'")
        subjects[name.strip()] = [p.pixels for p in photos]
        errors += skipped
    if len(subjects) < 2:
        raise ValueError(f"--subject: two or more subjects expected, got {len(subjects)}")
    return subjects, errors


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    from ..faces.identity import NoFaceError, get_embedder
    from ..faces.photos import load_folder
    from ..generation.diffusers_backend import DiffusersGenerator
    from ..generation.gate import GateSettings
    from ..generation.session import generate_to_folder
    from ..provenance.record import ProvenanceConfig, Record, lora_info

    out = Path(args.out)
    loras = args.lora or []
    try:
        subjects = None
        if args.subject:
            if args.enhance:
                raise ValueError("--enhance: the enhancement steps check one subject's identity; not with --subject")
            subjects, errors = _subject_photos(args.subject, load_folder)
            photos, reference_set = [], "subjects"
        elif not args.reference:
            raise ValueError("--reference: the subject's photos (or --subject NAME=FOLDER for each of several)")
        else:
            photos, errors, reference_set = _reference_photos(args.reference, args.reference_set, load_folder)
            if not photos:
                raise ValueError(f"--reference: no readable photo in '{args.reference}'")
        strengths = args.lora_strength or [1.0]
        if len(strengths) not in (1, len(loras)):
            raise ValueError(f"--lora-strength: one value, or one per --lora ({len(loras)}), got {len(strengths)}")
        settings = GateSettings(threshold=args.threshold, max_attempts=args.max_attempts,
                                lora_strength_step=args.lora_strength_step if len(strengths) == 1 else 0.0)
        settings.validate()
        embedder = get_embedder(args.embedder)
        generator = DiffusersGenerator(args.base_model, loras, family=args.family)
        provenance = ProvenanceConfig.from_env(**({"watermark": False} if args.no_watermark else {}))
    except (ValueError, FileNotFoundError, NoFaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    references = [p.pixels for p in photos]
    base = {"prompt": args.prompt, "negative": args.negative, "seed": args.seed, "steps": args.steps,
            "cfg": args.cfg, "width": args.size, "height": args.size, "lora_strength": strengths[0],
            **({"lora_strengths": strengths} if len(strengths) > 1 else {})}

    def on_attempt(attempt, _image):
        score = "no face" if attempt.score is None else f"{attempt.score:.4f}"
        print(f"attempt {attempt.index}: seed {attempt.params['seed']}, identity {score}"
              + (" PASS" if attempt.passed else ""), flush=True)

    try:
        # the record (and watermark) name the first LoRA; generate.json lists them all
        record = Record(model=generator.model, lora=lora_info(loras[0] if loras else None), prompt=args.prompt)
        result = generate_to_folder(generator, embedder, references, base, settings, out, on_attempt,
                                    record, provenance, subjects=subjects)
    except NoFaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"gate": result.to_json(), "base_model": args.base_model, "lora": loras[0] if loras else None,
              "loras": loras, "subjects": list(subjects or {}),
              "base_model_random_weights": generator.random_weights,
              "reference_set": reference_set, "references": len(photos),
              "skipped_references": [str(e) for e in errors]}
    final = result.best_image
    if args.enhance:
        from ..generation.enhance import enhance_chain

        names = [s.strip() for s in args.enhance.split(",") if s.strip()]
        steps = [(n, {"crop_size": args.size} if n == "face_refine" else {}) for n in names]
        regenerate = (generator.refiner(args.prompt, args.negative, seed=args.seed, steps=args.steps)
                      if "face_refine" in names else None)
        (final,), (reports,) = enhance_chain([final], references, steps, args.embedder, args.tolerance,
                                             regenerate=regenerate)
        report["enhance"] = [rep.__dict__ for rep in reports]
        for rep in reports:
            print(f"{rep.name}: {'applied' if rep.applied else 'rejected'}" + (f" ({rep.reason})" if rep.reason else ""))
        from dataclasses import replace

        from ..provenance.save import save_image

        best = result.attempts[result.best_index - 1]
        save_image(final, out / "enhanced.png",
                   replace(record, kind="enhanced", seed=best.params["seed"], gate=result.to_json()), provenance)
    (out / "generate.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'PASSED' if result.passed else 'FAILED'}: best attempt {result.best_index} "
          f"(threshold {result.threshold}, {result.embedder}); images and generate.json in {out}")
    return 0 if result.passed else 3


def dreambench_seeds() -> int:
    from ..metrics.dreambench import SEEDS_PER_PROMPT

    return SEEDS_PER_PROMPT


def _reference_photos(folder: str, which: str, load_folder):
    """The gate's reference photos: a folder of photos, or of a Persona dataset its face crops:
    the held-out ones ('holdout'; 'auto' when it holds any out), the training ones, or all."""
    from ..faces.dataset import read_dataset, read_manifest

    if read_manifest(folder) is None:
        return (*load_folder(folder, max_side=1024), "folder")
    held = read_dataset(folder, holdout=True)
    if which == "auto":
        which = "holdout" if held else "train"
    if which == "holdout" and not held:
        raise ValueError(f"--reference-set: dataset '{folder}' holds no photo out (persona prepare --holdout)")
    items = {"holdout": held, "train": read_dataset(folder), "all": read_dataset(folder) + held}[which]
    from ..faces.photos import load_photo

    return [load_photo(it.image, max_side=1024) for it in items if it.kind == "face"], [], which


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from ..faces.photos import load_folder
    from ..metrics.report import evaluate, expand_prompts, metrics_table, steps_table, write_report

    if args.protocol == "dreambench":
        return _dreambench(args)
    if args.run:
        from ..metrics.over_steps import evaluate_run

        try:
            results, chart = evaluate_run(args.run, args.embedder)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(steps_table(results))
        print(f"\nplot: {chart}")
        best = Path(args.run) / "best" / "best.json"
        if best.is_file():
            pick = json.loads(best.read_text())
            print(f"best checkpoint: step {pick['step']} (score {pick['score']}; rule: {pick['rule']}): "
                  f"{', '.join(pick['files']) or 'step recorded'}")
        else:
            print("best checkpoint: none picked (train with validate_every > 0 and an identity embedder)")
        return 0
    if not (args.generated and (args.reference or args.subject)):
        print("error: give --generated and --reference (or --subject NAME=FOLDER twice or more), "
              "or --run RUN_DIR", file=sys.stderr)
        return 2
    try:
        generated, errors = load_folder(args.generated, max_side=1024)
        rows = []
        if args.reference:
            references, ref_errors = load_folder(args.reference, max_side=1024)
            holdout, held_errors = load_folder(args.holdout, max_side=1024) if args.holdout else ([], [])
            errors += ref_errors + held_errors
            prompts = None
            if args.prompts:  # one prompt, or one per image in file-name order
                prompts = expand_prompts(Path(args.prompts).read_text(encoding="utf-8").splitlines(), len(generated))
            rows = evaluate([p.pixels for p in generated], [p.pixels for p in references], prompts,
                            embedder=args.embedder, holdout=[p.pixels for p in holdout] or None)
        if args.subject:
            from ..metrics.group import group_rows

            subjects, subject_errors = _subject_photos(args.subject, load_folder)
            errors += subject_errors
            rows += group_rows([p.pixels for p in generated], subjects, embedder=args.embedder)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json_path, _ = write_report(rows, args.out, {"generated": args.generated, "reference": args.reference,
                                                 "holdout": args.holdout, "subjects": args.subject,
                                                 "skipped_files": [str(e) for e in errors]})
    print(metrics_table(rows))
    print(f"\nreport: {json_path} and report.csv")
    return 0


def cmd_merge_loras(args: argparse.Namespace) -> int:
    from ..trainers.outputs.merge import merge_files

    strengths = args.strength or [1.0] * len(args.loras)
    try:
        path = merge_files(args.loras, strengths, args.out, args.method, args.rank)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged {len(args.loras)} LoRAs ({args.method}) into {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..core.config import ConfigError
    from ..studies.sweep import load_and_check, run_sweep

    try:
        cfg, _runs = load_and_check(args.config, args.jobs)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = run_sweep(cfg, log=lambda line: print(line, flush=True))
    print(data["table"])
    print(f"\nbest: {data['best']} ({data['rule']}); tables and charts in {cfg.output_dir}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    from ..core.tables import text_table
    from ..faces.calibration import calibrate, save
    from ..faces.identity import EMBEDDERS, get_embedder

    try:
        cal = calibrate(args.people_dir, get_embedder(args.embedder))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text_table(["embedder", "threshold", "equal error rate", "genuine pairs", "impostor pairs", "built-in"],
                     [(cal.embedder, cal.threshold, cal.equal_error_rate, cal.genuine_pairs, cal.impostor_pairs,
                       EMBEDDERS[cal.embedder].builtin_threshold)]))
    for line in cal.skipped:
        print(f"skipped: {line}")
    if args.out:
        Path(args.out).write_text(json.dumps(cal.to_json(), indent=2) + "\n")
    if args.save:
        print(f"saved: {save(cal)} (the gate's calibrated threshold for {cal.embedder} from now on)")
    return 0


def _dreambench(args: argparse.Namespace) -> int:
    """The DreamBench protocol for one subject: its 25 prompts x seeds, then DINO, CLIP-I, CLIP-T."""
    import json

    from PIL import Image

    from ..faces.photos import load_folder
    from ..metrics import dreambench

    if not (args.base_model and args.lora and args.reference):
        print("error: --protocol dreambench needs --base-model, --lora and --reference", file=sys.stderr)
        return 2
    try:
        from ..generation.diffusers_backend import DiffusersGenerator, lora_family
        from ..trainers.outputs.export import read_lora_metadata

        meta = read_lora_metadata(args.lora)
        token = args.token or meta.get("persona.token") or "sks"
        class_noun = args.class_noun or meta.get("persona.class") or "person"
        family = lora_family(args.lora) or "sd15"
        pairs = dreambench.prompts(token, class_noun, args.prompt_set)[:args.limit or None]
        references, ref_errors = _reference_photos(args.reference, "auto", load_folder)[:2]
        if not references:
            raise ValueError(f"--reference: no readable photo in '{args.reference}'")
        generator = DiffusersGenerator(args.base_model, args.lora, family=family)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, plain = [], []
    for i, (prompt, without_token) in enumerate(pairs):
        for seed in range(args.seeds):
            image = generator({"prompt": prompt, "seed": seed, "steps": args.steps, "cfg": args.cfg,
                               "width": args.size, "height": args.size})
            Image.fromarray(image).save(out / "images" / f"{i:02d}-{seed}.png")
            images.append(image)
            plain.append(without_token)
        print(f"prompt {i + 1}/{len(pairs)}: {prompt}", file=sys.stderr, flush=True)
    scores = dreambench.score(images, [p.pixels for p in references], plain)
    report = {"protocol": "dreambench", "token": token, "class": class_noun, "prompts": [p for p, _ in pairs],
              "seeds": list(range(args.seeds)), "base_model": args.base_model, "lora": args.lora,
              "base_model_random_weights": generator.random_weights, **scores.to_json()}
    (out / "dreambench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(scores.table())
    for note in scores.notes:
        print(note)
    print(f"\nimages and dreambench.json in {out}")
    return 0


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    import urllib.error

    from ..core.tables import text_table
    from ..core.weights import all_weights, cache_dir, fetch

    rows, failed = [], 0
    for spec in all_weights():
        if args.only and spec.filename not in args.only:
            continue
        if not spec.fetchable:
            rows.append((spec.filename, "by hand", f"unpack {spec.url} into {cache_dir() / spec.comfy_folder}"))
            continue
        try:
            path = fetch(spec, args.mirror)
            rows.append((spec.filename, "ok", str(path)))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failed += 1
            rows.append((spec.filename, "FAILED", str(exc)[:120]))
    print(text_table(["file", "result", "where / why"], rows))
    return 1 if failed else 0


def cmd_queue(args: argparse.Namespace) -> int:
    import json

    from ..comfy_client.client import ComfyClient, PromptFailed, PromptRejected, ServerGone, apply_overrides
    from ..comfy_client.graph import WorkflowError

    path = Path(args.workflow)
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: workflow '{path}': {exc}", file=sys.stderr)
        return 2
    client = ComfyClient(args.server)

    def on_event(kind: str, data: dict) -> None:
        if kind == "executing" and data.get("node"):
            print(f"running node {data['node']}", file=sys.stderr, flush=True)
        elif kind == "progress":
            print(f"  {data.get('value')}/{data.get('max')}", file=sys.stderr, flush=True)

    try:
        prompt = apply_overrides(client.to_api(workflow), args.set or [])
        result = client.run(prompt, Path(args.out), on_event)
    except (PromptRejected, WorkflowError, ValueError) as exc:
        print(f"error: the server refused the workflow:\n{exc}", file=sys.stderr)
        return 2
    except ServerGone as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except PromptFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"prompt {result.prompt_id} done; {len(result.files)} files in {args.out}")
    for f in result.files:
        print(f"  {f}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from ..core.tables import text_table
    from ..provenance.verify import verify

    reports = [verify(f) for f in args.files]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        rows = []
        for r in reports:
            if r["status"] == "unreadable" or "reason" in r:
                rows.append((r["file"], r["status"], "-", "-", r["reason"][:60]))
                continue
            wm, cred, rec = r["watermark"], r["credentials"], r["record"]
            rows.append((r["file"], r["status"], _watermark_cell(wm),
                         ("valid" + ("" if cred.get("trusted") else " (signer not on the C2PA trust list)")
                          if cred.get("valid") else f"INVALID: {', '.join(cred.get('errors') or [cred.get('state', '')])}")
                         if cred.get("present") else "none",
                         f"{rec['generator']}, {rec.get('kind')}" if rec else "none"))
        print(text_table(["file", "status", "watermark", "content credentials", "Persona record"], rows))
    statuses = {r["status"] for r in reports}
    return 2 if "unreadable" in statuses else 1 if statuses - {"ok"} else 0


def _watermark_cell(wm: dict) -> str:
    """What ``persona verify`` says of an image's watermark: found or not, the bits behind that
    judgement and how often it would be wrong on an unmarked image."""
    if wm.get("too_small"):
        return wm["reason"]
    rate = wm.get("false_positive_rate") or {}
    odds = f"; false positives {rate['by_chance']:.2g} by chance" + (f", {rate['measured']}" if "measured" in rate
                                                                      else "") if rate else ""
    bits = f"pack id {wm['pack_id_bits_agreeing']} bits" if "pack_id_bits_agreeing" in wm else ""
    if not wm["found"]:
        return "not found" + (f" ({wm['reason']})" if wm.get("reason") else f" ({bits}{odds})" if bits else "")
    payload = wm.get("payload") or {}
    seed = payload.get("seed_mod_256", payload.get("seed_mod_65536"))
    modulus = 256 if "seed_mod_256" in payload else 65536
    agreeing = f", {round(wm['bit_agreement'] * (32 if modulus == 256 else 48))}/{32 if modulus == 256 else 48} " \
               f"bits as recorded" if "bit_agreement" in wm else ""
    return (f"found ({wm.get('method', '')}: {bits}{odds}), seed {seed} (mod {modulus}), "
            f"lora {payload.get('lora_hash_prefix') or '-'}{agreeing}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    import os

    base = args.base_model or os.environ.get("PERSONA_BASE_MODEL") or None
    _summary, text = run_demo(Path(args.out), quick=args.quick, base_model=base)
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..faces.identity import BACKENDS
    from ..models.families import FAMILIES
    from ..trainers.entry import add_arguments as add_train_arguments

    parser = argparse.ArgumentParser(
        prog="persona", description="Personalized image generation: prepare, train, generate, measure.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="photos folder -> aligned, filtered, captioned dataset")
    p.add_argument("photos_dir", help="folder of 3-20 photos of the subject (never modified)")
    p.add_argument("dataset_dir", help="dataset folder to create or update")
    p.add_argument("--config", help="PrepareConfig as JSON or YAML")
    p.add_argument("--consent", metavar="FILE",
                   help="the subject's consent record (YAML/JSON: subject, consented_by, date, uses, document)")
    p.add_argument("--holdout", metavar="N|STEM,...",
                   help="hold photos out of training to measure identity on: a count, or photo stems")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a LoRA from a dataset (TrainConfig as JSON/YAML)")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="identity-gated generation (+ identity-safe enhancement)",
                       description="Exit code 0: the gate passed; 3: it did not (the best attempt is kept); 2: bad input.")
    p.add_argument("--base-model", required=True, help="diffusers folder or single-file .safetensors")
    p.add_argument("--family", choices=sorted(FAMILIES), default=None,
                   help="the base model's family (default: the one the first --lora was trained on, else sd15)")
    p.add_argument("--lora", action="append", help="a Persona / kohya LoRA .safetensors (again for each further "
                                                   "subject's LoRA: applied together)")
    p.add_argument("--lora-strength", type=float, action="append",
                   help="the LoRA strength (1.0): one value for every LoRA, or one per --lora in order")
    p.add_argument("--lora-strength-step", type=float, default=0.0, help="added to the strength at each new attempt")
    p.add_argument("--reference", help="folder of photos of the subject, or a Persona dataset")
    p.add_argument("--subject", action="append", metavar="NAME=FOLDER",
                   help="a picture of several subjects: each one's photos (twice or more, in place of "
                        "--reference); the group gate matches faces to subjects and passes when every subject "
                        "is there and no face resembles two")
    p.add_argument("--reference-set", choices=["auto", "holdout", "train", "all"], default="auto",
                   help="a dataset's photos the gate compares with: its held-out photos (auto: when it has "
                        "any), the training photos, or all")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="")
    p.add_argument("--embedder", choices=BACKENDS, default="dlib")
    p.add_argument("--threshold", type=float, help="identity cosine to pass (default: the embedder's calibrated one)")
    p.add_argument("--max-attempts", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--enhance", default="", help="comma-separated: face_refine,color_match,sharpen,denoise,film_grain")
    p.add_argument("--tolerance", type=float, default=0.01, help="largest identity drop an enhancement may cause")
    p.add_argument("--no-watermark", action="store_true",
                   help="save without the invisible watermark (each image's metadata says so)")
    p.add_argument("--out", default="runs/generate")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="measure generated images against reference photos")
    p.add_argument("--generated", help="folder of generated images")
    p.add_argument("--reference", help="folder of reference photos")
    p.add_argument("--run", help="a training run: its validation samples at each step against its dataset "
                                 "(and its held-out photos), and the best checkpoint it picked")
    p.add_argument("--holdout", help="folder of photos of the subject held out of training: identity on them "
                                     "and the copy-paste score")
    p.add_argument("--subject", action="append", metavar="NAME=FOLDER",
                   help="pictures of several subjects: each subject's reference photos (give it twice or more); "
                        "adds per-subject identity and presence, identity leakage and strangers")
    p.add_argument("--protocol", choices=["dreambench"],
                   help="dreambench: generate the benchmark's 25 prompts for the subject's class with fixed seeds "
                        "(--base-model, --lora, --reference) and report DINO, CLIP-I and CLIP-T in its form")
    p.add_argument("--base-model", help="dreambench: the base model")
    p.add_argument("--lora", help="dreambench: the subject's LoRA (its token and class are read from it)")
    p.add_argument("--token", help="dreambench: the identifier token (default: the LoRA's)")
    p.add_argument("--class-noun", help="dreambench: the class noun (default: the LoRA's)")
    p.add_argument("--prompt-set", choices=["auto", "live", "object"], default="auto",
                   help="dreambench: live subjects (people, pets) or objects; auto decides by class")
    p.add_argument("--seeds", type=int, default=dreambench_seeds(), help="dreambench: images per prompt (4)")
    p.add_argument("--limit", type=int, default=0, help="dreambench: only the first N prompts (0: all 25)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--prompts", help="text file: one prompt, or one per generated image")
    p.add_argument("--embedder", choices=BACKENDS, default="dlib")
    p.add_argument("--out", default="runs/eval", help="where report.json and report.csv go")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sweep", help="a study: train every run of a sweep (or the regimes), measure and compare them",
                       description="SWEEP.yaml: base (TrainConfig fields), axes (a grid) or variants (a list) or "
                                   "study: regimes, evaluation (prompts, seeds). A killed sweep started again "
                                   "skips finished runs and resumes the interrupted one.")
    p.add_argument("config", help="the SweepConfig (YAML or JSON)")
    p.add_argument("--jobs", type=int, help="runs trained at once (default: the config's jobs)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("merge-loras", help="several subject LoRAs in one file (concatenated, or SVD-merged to a rank)")
    p.add_argument("loras", nargs="+", help="kohya LoRA files")
    p.add_argument("--strength", type=float, nargs="+", help="one per LoRA (default 1 each)")
    p.add_argument("--method", choices=["concat", "svd"], default="concat",
                   help="concat: exact, rank = sum of ranks; svd: the sum cut to --rank")
    p.add_argument("--rank", type=int, help="svd: the merged rank")
    p.add_argument("--out", required=True, help="the merged .safetensors")
    p.set_defaults(func=cmd_merge_loras)

    p = sub.add_parser("calibrate", help="an identity threshold from your own photos of several people",
                       description="PEOPLE_DIR holds one folder of photos per person. Prints the equal-error "
                                   "threshold of same-person against different-person pairs.")
    p.add_argument("people_dir")
    p.add_argument("--embedder", choices=BACKENDS, default="dlib")
    p.add_argument("--out", help="write the calibration as JSON here")
    p.add_argument("--save", action="store_true",
                   help="use it from now on wherever a threshold of 0 means calibrated (the identity gate)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("fetch-weights", help="download every pretrained weights file into the Persona cache")
    p.add_argument("--mirror", help="a base URL that serves the files by name, instead of their original addresses")
    p.add_argument("--only", nargs="+", metavar="FILE", help="only these file names")
    p.set_defaults(func=cmd_fetch_weights)

    p = sub.add_parser("queue", help="run a workflow (UI or API format) on a running ComfyUI",
                       description="Exit codes: 0 done, 1 a node failed, 2 refused by validation, "
                                   "3 the server cannot be reached or went away.")
    p.add_argument("workflow", help="workflow JSON (UI format is converted with the server's /object_info)")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    p.add_argument("--out", default="runs/queue", help="where output images and history.json go")
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("verify", help="check images for Persona's watermark, content credentials and record",
                       description="Exit codes: 0 every file carries Persona's provenance intact; 1 a file has none, "
                                   "or its content credentials are broken; 2 a file cannot be read.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="the whole pipeline on the embedded sample faces")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="shortest settings (used by the tests)")
    p.add_argument("--base-model", help="a real SD1.x diffusers model folder instead of the tiny "
                                        "random-weight model (or set PERSONA_BASE_MODEL)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
