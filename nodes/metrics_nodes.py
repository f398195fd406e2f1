"""Persona Metrics Panel (a table of every metric inside the node) and Persona Compare."""
from __future__ import annotations

from dataclasses import asdict

from ..core.imaging import images_to_tensor, tensor_to_images
from ..core.tables import text_table
from ..faces.identity import BACKENDS
from .host import output_dir, safe_name

CATEGORY = "Persona/metrics"


class PersonaMetricsPanel:
    """Measure generated images against the reference photos; the table shows in the node."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("PERSONA_METRICS", "IMAGE")
    RETURN_NAMES = ("metrics", "chart")
    OUTPUT_TOOLTIPS = ("Every metric with its value or the reason it was skipped.", "A bar chart of the metrics.")
    DESCRIPTION = ("Identity, Face Distance Score, subject fidelity, stability, faceless count, SSIM, LPIPS, "
                   "diversity, CLIP score and Q_global; writes report.json and report.csv.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "generated": ("IMAGE", {"tooltip": "Generated images (one batch)."}),
            "reference": ("IMAGE", {"tooltip": "Photos of the subject."}),
            "prompts": ("STRING", {"default": "", "multiline": True, "tooltip":
                                   "One prompt for all images, or one per line per image (for the CLIP score)."}),
            "embedder": (list(BACKENDS), {"tooltip": "Identity embedder."}),
            "lpips_net": (["alex", "vgg"], {"tooltip": "LPIPS backbone."}),
            "report_name": ("STRING", {"default": "metrics", "tooltip":
                                       "report.json and report.csv go to output/persona/metrics/<report_name>/."}),
        }}

    def execute(self, generated, reference, prompts, embedder, lpips_net, report_name):
        from ..metrics.chart import metrics_chart
        from ..metrics.report import evaluate, expand_prompts, metrics_table, write_report

        name = safe_name(report_name, "report_name")
        images = tensor_to_images(generated)
        report = evaluate(images, tensor_to_images(reference), expand_prompts(prompts.splitlines(), len(images)),
                          embedder=embedder, lpips_net=lpips_net)
        folder = output_dir() / "persona" / "metrics" / name
        write_report(report, folder)
        rows = [asdict(r) for r in report]
        table = metrics_table(report)
        chart = metrics_chart({name: rows})
        return {"ui": {"text": [table], "persona_metrics": rows},
                "result": ({"name": name, "rows": rows, "folder": str(folder)}, images_to_tensor([chart]))}


class PersonaCompare:
    """Several runs' metrics side by side (sweeps, regimes)."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("chart", "table")
    OUTPUT_TOOLTIPS = ("Grouped bar chart of the runs.", "The runs' metrics as one table.")

    @classmethod
    def INPUT_TYPES(cls):
        optional = {f"metrics_{k}": ("PERSONA_METRICS", {"tooltip": f"Run {k} (from a Metrics Panel)."}) for k in "cd"}
        return {"required": {"metrics_a": ("PERSONA_METRICS", {"tooltip": "Run a (from a Metrics Panel)."}),
                             "metrics_b": ("PERSONA_METRICS", {"tooltip": "Run b (from a Metrics Panel)."})},
                "optional": optional}

    def execute(self, metrics_a, metrics_b, metrics_c=None, metrics_d=None):
        from ..metrics.chart import metrics_chart

        from ..metrics.report import compare_rows

        runs = [m for m in (metrics_a, metrics_b, metrics_c, metrics_d) if m is not None]
        labels, rows = compare_rows(runs)
        table = text_table(["metric"] + labels, rows)
        chart = metrics_chart({label: m["rows"] for label, m in zip(labels, runs)}, "Persona compare")
        return {"ui": {"text": [table]}, "result": (images_to_tensor([chart]), table)}


NODES = {
    "PersonaMetricsPanel": (PersonaMetricsPanel, "Persona Metrics Panel"),
    "PersonaCompare": (PersonaCompare, "Persona Compare Runs"),
}
