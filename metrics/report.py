"""The metric set of the four references over one set of generated images, as rows that
say 'skipped: <reason>' when a metric's weights or inputs are missing (never a fake 0).

Composite (reference 000, Eq. 3): Q_global = 0.3 Q_LPIPS + 0.2 Q_SSIM + 0.4 Q_identity +
0.1 Q_FID with Q_LPIPS = 1 - min(LPIPS, 1), Q_SSIM = max(SSIM, 0), Q_identity =
max(identity cosine, 0) and Q_FID = exp(-FID / 100). A skipped term is left out and the
remaining weights are renormalised; the row says which terms were used.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

WEIGHTS = {"lpips": 0.3, "ssim": 0.2, "identity": 0.4, "fid": 0.1}


@dataclass
class Row:
    metric: str
    value: float | None
    detail: str = ""
    status: str = "ok"

    def shown(self) -> str:
        return f"{self.value:.4f}" if self.value is not None else self.status


def skipped(metric: str, exc: Exception) -> Row:
    """A skipped row: the first sentence of the reason as status, the rest as detail."""
    text = " ".join(str(exc).split())
    head, sep, rest = text.partition(" Looked in:")
    return Row(metric, None, ("Looked in:" + rest) if sep else "", f"skipped: {head}")


def _resize_all(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    import cv2

    return [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]


def evaluate(generated: Sequence[np.ndarray], references: Sequence[np.ndarray],
             prompts: Sequence[str] | None = None, embedder: str = "dlib", lpips_net: str = "alex",
             size: int = 256, holdout: Sequence[np.ndarray] | None = None) -> list[Row]:
    """Every metric of ``generated`` against the subject's ``references`` (the training
    photos); with ``holdout`` (photos held out of training) also identity on those and the
    copy-paste score (``metrics.copy_paste``)."""
    from ..faces.identity import get_embedder, scores_from
    from .ssim import ssim, to_tensor

    if len(generated) == 0:
        raise ValueError("generated: no images to evaluate")
    if len(references) == 0:
        raise ValueError("reference: no reference images")
    rows: list[Row] = []
    gen, ref = _resize_all(generated, size), _resize_all(references, size)
    # identity (reference 000) and Face Distance Score (reference 001)
    emb = get_embedder(embedder)
    gen_emb, ref_emb = emb.embed(generated), emb.embed(references)  # each image embedded once
    scores = scores_from(gen_emb, ref_emb)
    valid = scores[~np.isnan(scores)]
    faceless = int(sum(not f for f in gen_emb.found))
    rows.append(Row("faceless images", float(faceless), f"of {len(generated)}"))
    if len(valid):
        rows.append(Row("identity cosine (mean)", float(valid.mean()), f"{emb.name}, threshold {emb.threshold}"))
        rows.append(Row("identity pass rate", float((valid >= emb.threshold).mean()), f"faces only ({len(valid)})"))
        rows.append(Row("face distance score", float(np.sqrt(np.clip(2 - 2 * valid, 0, None)).mean()),
                        "mean Euclidean distance of unit embeddings to the mean reference (lower is better)"))
        best, mean = scores_from(gen_emb, ref_emb, "max"), scores_from(gen_emb, ref_emb, "mean")
        rows.append(Row("subject fidelity (max)", float(np.nanmean(best)), "best matching reference, averaged"))
        rows.append(Row("subject fidelity (mean)", float(np.nanmean(mean)), "mean over references, averaged"))
        rows.append(Row("identity stability (std)", float(valid.std()), "std across prompts and seeds"))
        if holdout:
            rows.extend(_holdout_rows(emb, gen_emb, ref_emb, holdout))
    else:
        for name in ("identity cosine (mean)", "face distance score"):
            rows.append(Row(name, None, status="skipped: no face in any generated image"))
    # SSIM to the references (all pairs)
    g, r = to_tensor(gen), to_tensor(ref)
    gi = torch.arange(len(gen)).repeat_interleave(len(ref))
    ri = torch.arange(len(ref)).repeat(len(gen))
    pair_ssim = ssim(g[gi], r[ri])
    rows.append(Row("SSIM to references", float(pair_ssim.mean()), "mean over generated x reference pairs"))
    # LPIPS to references and diversity
    try:
        from .perceptual import lpips_model

        model = lpips_model(lpips_net)
        fg, fr = model.features(g), model.features(r)  # each image through the backbone once
        to_ref = model.distance([f[gi] for f in fg], [f[ri] for f in fr])
        rows.append(Row(f"LPIPS to references ({lpips_net})", float(to_ref.mean()), "lower is closer"))
        if len(gen) > 1:
            i, j = torch.triu_indices(len(gen), len(gen), offset=1)
            div = model.distance([f[i] for f in fg], [f[j] for f in fg])
            rows.append(Row(f"diversity (pairwise LPIPS, {lpips_net})", float(div.mean()), f"{len(i)} pairs"))
    except (FileNotFoundError, ImportError) as exc:
        rows.append(skipped(f"LPIPS to references ({lpips_net})", exc))
        rows.append(skipped("diversity (pairwise LPIPS)", exc))
    # DINO subject fidelity (DreamBench)
    rows.extend(_dino_rows(generated, references))
    # CLIP text-image score and image-image fidelity (reference 001/002)
    try:
        rows.extend(_clip_rows(generated, references, prompts))
    except (FileNotFoundError, ImportError) as exc:
        rows.append(skipped("CLIP score", exc))
    rows.extend(_distribution_rows(gen, ref))
    rows.append(q_global(rows, lpips_net))
    return rows


def _dino_rows(generated, references) -> list[Row]:
    from .dino import LABELS, dino_model, fidelity

    rows = []
    for kind, label in LABELS.items():
        try:
            rows.append(Row(label, fidelity(dino_model(kind), generated, references),
                            "mean CLS cosine over generated x reference pairs"))
        except (FileNotFoundError, ImportError) as exc:
            rows.append(skipped(label, exc))
    return rows


def _holdout_rows(emb, gen_emb, ref_emb, holdout) -> list[Row]:
    from ..faces.identity import copy_paste, scores_from

    held = emb.embed(holdout)
    if not all(held.found):
        return [Row("identity cosine (held-out)", None, status="skipped: no face in a held-out photo")]
    on_holdout = scores_from(gen_emb, held)
    cp = copy_paste(gen_emb, ref_emb, held)
    return [Row("identity cosine (held-out)", float(np.nanmean(on_holdout)),
                f"{emb.name}, {len(holdout)} photos never trained on"),
            Row("copy-paste score", float(np.nanmean(cp)),
                "nearest training photo minus nearest held-out photo (cosine); high: copying")]


def _distribution_rows(gen, ref) -> list[Row]:
    """KID first: with fewer images than the 2048 feature dimensions FID is biased."""
    from .distribution import fid, kid
    from .inception import features, inception_model

    try:
        model = inception_model()
    except (FileNotFoundError, ImportError) as exc:
        return [skipped("KID", exc), skipped("FID", exc)]
    if len(gen) < 2 or len(ref) < 2:
        reason = "skipped: KID and FID need at least 2 generated and 2 reference images"
        return [Row("KID", None, status=reason), Row("FID", None, status=reason)]
    fa, fb = features(model, gen), features(model, ref)
    k_mean, k_std = kid(fa, fb, subsets=50)
    few = min(len(fa), len(fb)) < fa.shape[1]
    note = f"{len(fa)} vs {len(fb)} images; fewer than {fa.shape[1]} features: biased, read KID" if few else ""
    return [Row("KID", k_mean, f"std {k_std:.4f} over 50 subsets"), Row("FID", fid(fa, fb), note)]


def _clip_rows(generated, references, prompts) -> list[Row]:
    import torch
    from PIL import Image

    from ..core.clip_models import load_clip

    model, preprocess, tokenizer = load_clip("ViT-B-32", "laion2b")
    with torch.no_grad():
        gi = torch.nn.functional.normalize(model.encode_image(
            torch.stack([preprocess(Image.fromarray(im)) for im in generated])).float(), dim=1)
        ri = torch.nn.functional.normalize(model.encode_image(
            torch.stack([preprocess(Image.fromarray(im)) for im in references])).float(), dim=1)
        rows = [Row("CLIP subject fidelity (image-image)", float((gi @ ri.T).mean()), "ViT-B-32")]
        if prompts:
            t = torch.nn.functional.normalize(model.encode_text(tokenizer(list(prompts))).float(), dim=1)
            rows.append(Row("CLIP score (text-image)", float(100 * (gi * t).sum(1).clamp(min=0).mean()),
                            "100 x cosine, ViT-B-32"))
    return rows


def q_global(rows: list[Row], lpips_net: str) -> Row:
    values = {r.metric: r.value for r in rows}
    terms = {}
    if values.get(f"LPIPS to references ({lpips_net})") is not None:
        terms["lpips"] = 1 - min(values[f"LPIPS to references ({lpips_net})"], 1.0)
    if values.get("SSIM to references") is not None:
        terms["ssim"] = max(values["SSIM to references"], 0.0)
    if values.get("identity cosine (mean)") is not None:
        terms["identity"] = max(values["identity cosine (mean)"], 0.0)
    if values.get("FID") is not None:
        terms["fid"] = float(np.exp(-values["FID"] / 100.0))
    if not terms:
        return Row("Q_global", None, status="skipped: no term available")
    total = sum(WEIGHTS[k] for k in terms)
    value = sum(WEIGHTS[k] * v for k, v in terms.items()) / total
    missing = [k for k in WEIGHTS if k not in terms]
    return Row("Q_global", value, "terms: " + ", ".join(terms) + (f" (without {', '.join(missing)}; "
                                                                    f"weights renormalised)" if missing else ""))


def metrics_table(rows: Sequence[Row], markdown: bool = False) -> str:
    """The metric rows as a table: metric, value (or why it was skipped), detail."""
    from ..core.tables import text_table

    return text_table(["metric", "value", "detail"], [(r.metric, r.shown(), r.detail) for r in rows], markdown)


def steps_table(results: dict[int, list[Row]]) -> str:
    """Metrics of several training steps side by side (``persona eval --run``)."""
    from ..core.tables import text_table

    names: list[str] = []
    for rows in results.values():
        names += [r.metric for r in rows if r.metric not in names]
    cells = [[n] + [next((r.shown() for r in rows if r.metric == n), "-") for rows in results.values()]
             for n in names]
    return text_table(["metric"] + [f"step {s}" for s in results], cells)


def expand_prompts(prompts: Sequence[str], count: int) -> list[str] | None:
    """One prompt for every image, or one per image; None when there is none."""
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        return None
    if len(prompts) == 1:
        return prompts * count
    if len(prompts) != count:
        raise ValueError(f"prompts: {len(prompts)} prompts for {count} images (give one, or one per image)")
    return prompts


def compare_rows(runs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Several runs (``{"name", "rows"}``) as one table: (labels, rows of metric + one cell per run)."""
    names = [m["name"] for m in runs]
    labels = [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]
    metrics: list[str] = []
    for m in runs:
        metrics += [r["metric"] for r in m["rows"] if r["metric"] not in metrics]
    table = []
    for metric in metrics:
        cells = []
        for m in runs:
            r = next((x for x in m["rows"] if x["metric"] == metric), None)
            cells.append("-" if r is None else (f"{r['value']:.4f}" if r["value"] is not None else "skipped"))
        table.append([metric] + cells)
    return labels, table


def write_report(rows: list[Row], out: str | Path, extra: dict | None = None) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"metrics": [asdict(r) for r in rows], **(extra or {})},
                                                indent=2) + "\n")
    with open(out / "report.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "value", "status", "detail"])
        for r in rows:
            w.writerow([r.metric, "" if r.value is None else f"{r.value:.6f}", r.status, r.detail])
    return out / "report.json", out / "report.csv"
