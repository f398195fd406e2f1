"""PrepareConfig: the one config of dataset preparation (node, CLI and tests share it)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..core.config import JobConfig, divisible_by_8


class PrepareConfig(JobConfig):
    version: Literal[1] = Field(1, description="Config format version.")
    subject: Literal["face", "object"] = Field(
        "face", description="'face': detect and align faces; 'object': pets/objects, "
                            "aspect-preserving square crop instead of face alignment.")
    resolution: int = Field(512, ge=64, le=2048,
                            description="Side of the square training images in px (512, 768 or 1024 for real models).")
    face_margin: float = Field(0.6, ge=0.0, le=3.0,
                               description="Context around the tight face crop: the tight crop spans 1/(1+2*margin) of the image width.")
    align_mode: Literal["eyes", "five_point"] = Field(
        "eyes", description="'eyes': both eye centres land exactly on the template; "
                            "'five_point': least squares over all 5 landmarks.")
    border: Literal["reflect", "replicate", "constant"] = Field(
        "reflect", description="How pixels outside the photo are filled after alignment.")
    object_crop: Literal["center", "box"] = Field(
        "center", description="Non-face subjects: centre crop, or a crop around subject_boxes[stem].")
    subject_boxes: dict[str, list[float]] = Field(
        default_factory=dict, description="Non-face subjects: per-photo stem, a box [x1, y1, x2, y2] in photo pixels.")
    detect_max_side: int = Field(1024, ge=160, le=4096,
                                 description="Faces are detected on a copy reduced to this longer side; landmarks are mapped back.")
    detect_coarse_side: int = Field(
        320, ge=0, le=2048, description="Find faces on a copy this small first, then refine the landmarks on a crop "
                                        "around each face (0: always search the full detection copy). Not used with "
                                        "multiple_faces='reject', which must see every face.")
    max_pixels: int = Field(150_000_000, ge=1, description="Photos with more pixels are rejected as 'too large'.")
    # quality filter
    multiple_faces: Literal["largest", "reject"] = Field(
        "largest", description="With several faces in a photo: keep the largest, or reject the photo.")
    min_confidence: float = Field(0.95, ge=0.0, le=1.0, description="Minimum MTCNN face probability.")
    min_face_px: int = Field(64, ge=1, description="Minimum shorter side of the face box, in source pixels.")
    min_sharpness: float = Field(15.0, ge=0.0, description="Minimum variance of the Laplacian of the face (256 px gray).")
    max_yaw_deg: float = Field(60.0, ge=0.0, le=90.0, description="Maximum estimated head yaw in degrees.")
    min_brightness: float = Field(0.12, ge=0.0, le=1.0, description="Minimum mean luminance of the face (0..1).")
    max_brightness: float = Field(0.92, ge=0.0, le=1.0, description="Maximum mean luminance of the face (0..1).")
    max_clipped_fraction: float = Field(0.35, ge=0.0, le=1.0,
                                        description="Maximum fraction of the face that is pure black or pure white.")
    # preprocessing
    white_balance: bool = Field(False, description="Grey-world white balance.")
    clahe: bool = Field(False, description="Illumination correction: CLAHE on the L channel.")
    clahe_clip_limit: float = Field(2.0, gt=0.0, le=40.0, description="CLAHE clip limit.")
    contrast: bool = Field(False, description="Stretch luminance between its 1st and 99th percentiles.")
    denoise: bool = Field(False, description="Non-local means noise reduction.")
    denoise_strength: float = Field(5.0, gt=0.0, le=30.0, description="Noise reduction strength (h).")
    # captions and masks
    token: str = Field("sks", min_length=1, description="The rare identifier token of the subject.")
    class_noun: str = Field("person", min_length=1, description="The class noun (person, man, woman, dog, toy...).")
    caption_template: str = Field("a photo of {token} {class}",
                                  description="Caption template; {token} and {class} are filled in.")
    extra_text: dict[str, str] = Field(default_factory=dict,
                                       description="Per-photo stem, text appended to its caption.")
    use_existing_captions: bool = Field(True, description="Use a same-stem .txt next to a photo as its caption.")
    auto_caption: Literal["off", "blip", "vlm"] = Field(
        "off", description="Automatic captions appended to the template: 'blip' (BLIP), or 'vlm': any local "
                           "vision-language model transformers loads (Florence-2, GIT, SmolVLM, Qwen2-VL...), "
                           "from caption_model. Without its weights: the template, with a warning.")
    blip_model: str = Field("", description="Local folder of a BLIP captioning model (empty: the default name in the weights cache).")
    caption_model: str = Field("", description="Local folder of the captioning model (auto_caption 'vlm'; for "
                                               "'blip' it replaces blip_model).")
    caption_prompt: str = Field("Describe this photo in one short sentence: clothing, setting, lighting and "
                                "expression.", description="What chat vision-language models are asked.")
    wider_crops: Literal["none", "head_shoulders", "half_body", "both"] = Field(
        "none", description="Besides the aligned face crop, write head-and-shoulders and/or half-body crops around "
                            "the face (when the photo has them), each at its aspect-ratio bucket and captioned with "
                            "crop_captions; train them with aspect_buckets.")
    crop_captions: dict[str, str] = Field(
        default_factory=lambda: {"head_shoulders": "head and shoulders", "half_body": "half body"},
        description="Text appended to the caption of each kind of wider crop.")
    mask_feather: float = Field(0.08, ge=0.0, le=1.0, description="Face mask edge softness, fraction of the face width.")
    image_format: Literal["png", "jpg"] = Field("png", description="File format of the dataset images.")
    holdout: int | list[str] = Field(0, description="Photos held out of training, to measure identity on photos the "
                                                    "model never saw: a count (the last N accepted photos by name) or "
                                                    "a list of photo stems. Aligned like the others, marked in the "
                                                    "manifest, never trained on.")

    @model_validator(mode="after")
    def _caption_model_given(self):
        if self.auto_caption == "vlm" and not self.caption_model.strip():
            raise ValueError("caption_model: auto_caption 'vlm' needs the folder of a local captioning model")
        return self

    @field_validator("caption_template")
    @classmethod
    def _template_has_token(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("must contain {token}, or the subject is never named")
        try:
            value.format(token="t", **{"class": "c"})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{token}} and {{class}} may be used ({exc})") from None
        return value

    _resolution = field_validator("resolution")(classmethod(lambda cls, v: divisible_by_8(v)))

    @field_validator("holdout")
    @classmethod
    def _holdout(cls, value):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"a count of photos (0 or more) or a list of stems, got {value}")
        return value

    def processing_digest(self) -> str:
        """Hash of every field that changes an output file: a changed one reprocesses all
        (which photos are held out changes no file)."""
        return self.digest(set(type(self).model_fields) - {"holdout"})
