"""Identity-gated sampling with ComfyUI's own sampler, and identity-safe enhancement nodes."""
from __future__ import annotations

import json

import numpy as np

from ..core.imaging import images_to_tensor, tensor_to_images, tensor_to_masks
from ..faces.identity import BACKENDS, thresholds_text
from ..provenance.watermark import carry, mark_generated
from .host import Progress, interrupt_requested, ksampler, samplers

CATEGORY_GEN = "Persona/generate"
CATEGORY_ENH = "Persona/enhance"


def sampling_inputs(steps: int, cfg: float, denoise: float, what: str) -> dict:
    """KSampler-like widgets (seed, steps, cfg, sampler, scheduler, denoise)."""
    sampler_names, scheduler_names = samplers()
    return {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 48, "tooltip": f"Sampling seed{what}."}),
        "steps": ("INT", {"default": steps, "min": 1, "max": 1000, "tooltip": "Sampling steps."}),
        "cfg": ("FLOAT", {"default": cfg, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Classifier-free guidance."}),
        "sampler_name": (sampler_names, {"tooltip": "ComfyUI sampler."}),
        "scheduler": (scheduler_names, {"tooltip": "ComfyUI scheduler."}),
        "denoise": ("FLOAT", {"default": denoise, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Denoise strength."}),
    }


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: comma-separated numbers expected, got '{text}'") from None


class PersonaIdentityGatedSampler:
    """KSampler behind an identity gate: sample, score the face against the references,
    and sample again (new seed, CFG/steps schedule) until it passes or attempts run out."""

    CATEGORY = CATEGORY_GEN
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "LATENT")
    RETURN_NAMES = ("best", "attempts", "scores", "best_latent")
    OUTPUT_TOOLTIPS = ("The attempt with the highest identity score.", "Every attempt, in order.",
                       "JSON: each attempt's parameters, score, pass/fail and reason.",
                       "The latent of the best attempt.")
    OUTPUT_NODE = True
    DESCRIPTION = "Reference 000 Algorithm 2 in ComfyUI: works with any model ComfyUI loads and any LoRA applied before it."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to sample (with any LoRA applied)."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive prompt conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning."}),
            "latent_image": ("LATENT", {"tooltip": "Starting latent (the first of a batch is used)."}),
            "vae": ("VAE", {"tooltip": "Decodes each attempt for scoring."}),
            "reference": ("IMAGE", {"tooltip": "Photo(s) of the subject; their mean embedding is the reference."}),
            **sampling_inputs(30, 7.0, 1.0, " of the first attempt (attempt k uses seed + k)"),
            "embedder": (list(BACKENDS), {"tooltip": "Identity embedder: dlib (offline), facenet (VGGFace2 weights), arcface (insightface ONNX), clip (non-face subjects)."}),
            "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "Pass when the identity cosine reaches this. 0: the embedder's own calibrated "
                                    f"threshold ({thresholds_text()}). The value used is shown in the output."}),
            "max_attempts": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Most samples to draw."}),
            "cfg_schedule": ("STRING", {"default": "", "tooltip": "Optional CFG per attempt, e.g. '7, 6, 5' (the last repeats)."}),
            "steps_schedule": ("STRING", {"default": "", "tooltip": "Optional steps per attempt, e.g. '30, 40'."}),
            "reference_mode": (["mean_reference", "max", "mean"], {"tooltip":
                               "Score against the mean reference embedding, or the max/mean over the references."}),
        }}

    def execute(self, model, positive, negative, latent_image, vae, reference, seed, steps, cfg,
                sampler_name, scheduler, denoise, embedder, threshold, max_attempts, cfg_schedule,
                steps_schedule, reference_mode):
        from ..faces.identity import get_embedder
        from ..generation.gate import gated_generate

        settings = _gate_settings(threshold, max_attempts, cfg_schedule, steps_schedule, reference_mode)
        embed = get_embedder(embedder)
        refs = tensor_to_images(reference)
        return _sample_behind_gate(
            lambda generate, base, on_attempt: gated_generate(generate, embed, refs, base, settings, on_attempt,
                                                              interrupt_requested),
            settings, model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name, scheduler,
            denoise)


def _gate_settings(threshold, max_attempts, cfg_schedule, steps_schedule, reference_mode="mean_reference"):
    from ..generation.gate import GateSettings

    settings = GateSettings(threshold=threshold or None, max_attempts=max_attempts,
                            cfg_schedule=_floats(cfg_schedule, "cfg_schedule"),
                            steps_schedule=[int(v) for v in _floats(steps_schedule, "steps_schedule")],
                            reference_mode=reference_mode)
    settings.validate()
    return settings


def _attempt_line(a) -> str:
    text = f"#{a.index} seed {a.params['seed']}: {a.score if a.score is not None else 'no face'}"
    if a.subjects:
        text += " (" + ", ".join(f"{n} {'missing' if v is None else v}" for n, v in a.subjects["subjects"].items()) + ")"
    return text + (f" {a.reason}" if a.reason and a.score is not None else "")


def _sample_behind_gate(run_gate, settings, model, positive, negative, latent_image, vae, seed, steps, cfg,
                        sampler_name, scheduler, denoise):
    """ComfyUI's KSampler as the gate's ``generate``; the node outputs of a gate result."""
    latent = {k: v for k, v in latent_image.items()}
    latent["samples"] = latent_image["samples"][:1]
    latents: dict[int, dict] = {}

    def generate(params):
        out = ksampler(model, params["seed"], params["steps"], params["cfg"], sampler_name, scheduler,
                       positive, negative, latent, denoise)
        latents[params["seed"]] = out
        return tensor_to_images(vae.decode(out["samples"]))[0]

    bar = Progress(settings.max_attempts)
    result = run_gate(generate, {"seed": seed, "steps": steps, "cfg": cfg},
                      lambda a, _im: bar.update(a.index, settings.max_attempts))
    best_params = result.attempts[result.best_index - 1].params
    report = json.dumps(result.to_json(), indent=2)
    # every image leaves the node with Persona's watermark (seed of its attempt)
    marked, notes = zip(*[mark_generated(im, a.params["seed"]) for im, a in zip(result.images, result.attempts)])
    attempts = images_to_tensor(list(marked))
    used = "calibrated" if settings.threshold is None else "given"
    summary = (f"{'PASSED' if result.passed else 'FAILED'}: best attempt {result.best_index} of "
               f"{len(result.attempts)}, threshold {result.threshold} ({used}, {result.embedder})\n" +
               "\n".join(f"{_attempt_line(a)}; {note}" for a, note in zip(result.attempts, notes)))
    return {"ui": {"text": [summary]},
            "result": (images_to_tensor([marked[result.best_index - 1]]), attempts, report,
                       latents[best_params["seed"]])}


class PersonaGroupGatedSampler(PersonaIdentityGatedSampler):
    """KSampler behind a gate for several subjects in one picture (one LoRA each)."""

    OUTPUT_TOOLTIPS = ("The attempt whose weakest subject scores highest.", "Every attempt, in order.",
                       "JSON: each attempt's parameters, per-subject scores, missing subjects and leaking faces.",
                       "The latent of the best attempt.")
    DESCRIPTION = ("Every face is matched to a subject one to one (the optimal assignment of identity scores); "
                   "an attempt passes when each subject's face reaches the threshold and no face resembles two "
                   "subjects (identity leakage). Use with two or more LoRAs chained, or a merged one.")

    @classmethod
    def INPUT_TYPES(cls):
        base = super().INPUT_TYPES()["required"]
        required = {k: v for k, v in base.items() if k not in ("reference", "reference_mode")}
        required["reference"] = ("IMAGE", {"tooltip": "Photo(s) of the first subject."})
        required["reference_2"] = ("IMAGE", {"tooltip": "Photo(s) of the second subject."})
        required["names"] = ("STRING", {"default": "subject_1, subject_2", "tooltip":
                                        "Comma-separated names of the subjects, in reference order (report only)."})
        required["allow_leakage"] = ("BOOLEAN", {"default": False, "tooltip":
                                                 "Pass an attempt even when a face resembles two subjects."})
        return {"required": required,
                "optional": {"reference_3": ("IMAGE", {"tooltip": "Photo(s) of a third subject."}),
                             "reference_4": ("IMAGE", {"tooltip": "Photo(s) of a fourth subject."})}}

    def execute(self, model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name, scheduler,
                denoise, embedder, threshold, max_attempts, cfg_schedule, steps_schedule, reference, reference_2,
                names, allow_leakage, reference_3=None, reference_4=None):
        from ..faces.identity import get_embedder
        from ..generation.gate import gated_generate_group

        settings = _gate_settings(threshold, max_attempts, cfg_schedule, steps_schedule)
        subjects = [tensor_to_images(r) for r in (reference, reference_2, reference_3, reference_4) if r is not None]
        labels = [n.strip() for n in names.split(",") if n.strip()]
        if len(labels) != len(subjects):
            raise ValueError(f"names: {len(labels)} names ('{names}') for {len(subjects)} connected references")
        embed = get_embedder(embedder)
        return _sample_behind_gate(
            lambda generate, base, on_attempt: gated_generate_group(
                generate, embed, subjects, base, settings, labels, allow_leakage, on_attempt, interrupt_requested),
            settings, model, positive, negative, latent_image, vae, seed, steps, cfg, sampler_name, scheduler,
            denoise)


class _EnhanceNode:
    """Shared adapter: one headless step over a batch, identity-guarded."""

    CATEGORY = CATEGORY_ENH
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "report")
    OUTPUT_TOOLTIPS = ("The enhanced images (a rejected step leaves its image unchanged).",
                       "Per image: applied or rejected, identity before and after.")
    STEP = ""

    @classmethod
    def common_inputs(cls):
        return {
            "image": ("IMAGE", {"tooltip": "Images to enhance."}),
            "reference": ("IMAGE", {"tooltip": "Photo(s) of the subject for the identity-drift check."}),
            "embedder": (list(BACKENDS), {"tooltip": "Identity embedder of the drift check."}),
            "tolerance": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                                    "Reject the step when the identity score drops by more than this."}),
            "whole_image": ("BOOLEAN", {"default": False, "tooltip": "Apply everywhere instead of inside the face mask."}),
        }

    @staticmethod
    def optional_mask():
        return {"mask": ("MASK", {"tooltip": "Use this mask instead of the detected face mask."})}

    def run(self, image, reference, embedder, tolerance, whole_image, steps, mask=None, regenerate=None):
        """``steps``: (step name, params) pairs, run in order by the headless enhancement chain."""
        from ..generation.enhance import enhance_chain

        masks = tensor_to_masks(mask) if mask is not None else None
        before = tensor_to_images(image)
        out, reports = enhance_chain(before, tensor_to_images(reference), steps,
                                     embedder, tolerance, masks, whole_image, regenerate)
        out = [carry(b, a) for b, a in zip(before, out)]  # the input's watermark goes on
        blocks = []
        for k, (step, _params) in enumerate(steps):
            lines = [f"#{i}: {'applied' if r[k].applied else 'rejected'} "
                     f"(identity {r[k].score_before} -> {r[k].score_after})" + (f": {r[k].reason}" if r[k].reason else "")
                     for i, r in enumerate(reports)]
            blocks.append(f"{step}\n" + "\n".join(lines))
        text = "\n".join(blocks)
        return {"ui": {"text": [text]}, "result": (images_to_tensor(out), text)}


class PersonaSharpen(_EnhanceNode):
    STEP = "sharpen"
    DESCRIPTION = "Unsharp mask on the face, kept only if identity does not drift."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**cls.common_inputs(),
                             "radius": ("FLOAT", {"default": 1.5, "min": 0.1, "max": 20.0, "step": 0.1, "tooltip": "Blur radius (px)."}),
                             "amount": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 5.0, "step": 0.05, "tooltip": "Strength."}),
                             "threshold": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 255.0, "step": 0.5, "tooltip": "Ignore differences below this (0..255)."})},
                "optional": cls.optional_mask()}

    def execute(self, image, reference, embedder, tolerance, whole_image, radius, amount, threshold, mask=None):
        return self.run(image, reference, embedder, tolerance, whole_image,
                        [(self.STEP, {"radius": radius, "amount": amount, "threshold": threshold})], mask)


class PersonaColorMatch(_EnhanceNode):
    STEP = "color_match"
    DESCRIPTION = "Match the face's Lab colour statistics to the reference photos' faces."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**cls.common_inputs(),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "0: unchanged, 1: full match."}),
                             "white_balance": ("BOOLEAN", {"default": False, "tooltip": "Grey-world white balance first."})},
                "optional": cls.optional_mask()}

    def execute(self, image, reference, embedder, tolerance, whole_image, strength, white_balance, mask=None):
        return self.run(image, reference, embedder, tolerance, whole_image,
                        [(self.STEP, {"strength": strength, "white_balance": white_balance})], mask)


class PersonaPhotoFinish(_EnhanceNode):
    STEP = "film_grain"
    DESCRIPTION = "Noise reduction, then film grain, for a photographic finish (each identity-guarded)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**cls.common_inputs(),
                             "denoise_strength": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 30.0, "step": 0.5, "tooltip": "Non-local means strength (0: off)."}),
                             "grain": ("FLOAT", {"default": 0.02, "min": 0.0, "max": 0.3, "step": 0.005, "tooltip": "Grain std (0..1 units; 0: off)."}),
                             "grain_size": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 8.0, "step": 0.5, "tooltip": "Grain size (px)."}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Grain seed."})},
                "optional": cls.optional_mask()}

    def execute(self, image, reference, embedder, tolerance, whole_image, denoise_strength, grain,
                grain_size, seed, mask=None):
        steps = ([("denoise", {"strength": denoise_strength})] if denoise_strength > 0 else []) + \
                ([("film_grain", {"amount": grain, "size": grain_size, "seed": seed})] if grain > 0 else [])
        if not steps:
            text = "nothing to do (denoise and grain are 0)"
            return {"ui": {"text": [text]}, "result": (image, text)}
        return self.run(image, reference, embedder, tolerance, whole_image, steps, mask)


class PersonaFaceRefine(_EnhanceNode):
    STEP = "face_refine"
    DESCRIPTION = ("Re-diffuse the face crop at low denoise with the same model, LoRA and prompt, "
                   "paste it back feathered, and keep it only if identity does not drift.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**cls.common_inputs(),
                             "model": ("MODEL", {"tooltip": "The generation model (with its LoRA)."}),
                             "vae": ("VAE", {"tooltip": "VAE of the model."}),
                             "positive": ("CONDITIONING", {"tooltip": "Positive conditioning."}),
                             "negative": ("CONDITIONING", {"tooltip": "Negative conditioning."}),
                             **sampling_inputs(20, 6.0, 0.35, " of the face re-diffusion"),
                             "crop_size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip": "The face crop is sampled at this size."})},
                "optional": cls.optional_mask()}

    def execute(self, image, reference, embedder, tolerance, whole_image, model, vae, positive,
                negative, seed, steps, cfg, sampler_name, scheduler, denoise, crop_size, mask=None):
        def regenerate(crop: np.ndarray) -> np.ndarray:
            pixels = images_to_tensor([crop])
            latent = {"samples": vae.encode(pixels[:, :, :, :3])}
            out = ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise)
            return tensor_to_images(vae.decode(out["samples"]))[0]

        return self.run(image, reference, embedder, tolerance, whole_image,
                        [(self.STEP, {"crop_size": crop_size})], mask, regenerate)


NODES = {
    "PersonaIdentityGatedSampler": (PersonaIdentityGatedSampler, "Persona Identity-Gated Sampler"),
    "PersonaGroupGatedSampler": (PersonaGroupGatedSampler, "Persona Group-Gated Sampler (several subjects)"),
    "PersonaSharpen": (PersonaSharpen, "Persona Sharpen (identity-safe)"),
    "PersonaColorMatch": (PersonaColorMatch, "Persona Color Match (identity-safe)"),
    "PersonaPhotoFinish": (PersonaPhotoFinish, "Persona Photo Finish (identity-safe)"),
    "PersonaFaceRefine": (PersonaFaceRefine, "Persona Face Refine (identity-safe)"),
}
