"""Identity embedders behind one interface: ``embed(images) -> unit vectors``.

Each backend has a calibrated threshold on the cosine similarity of its unit vectors
("same person" at or above it); ``persona calibrate --save`` replaces it with one derived
from the user's own photos (``faces.calibration``). The built-in ones and their evidence:

- ``dlib``: dlib's ResNet (128-d) from face-recognition-models, offline. dlib's own rule is
  a Euclidean distance of 0.6 between raw descriptors (norm ~1.43), which is a cosine of
  about 0.91 between the unit vectors.
- ``facenet``: facenet-pytorch's InceptionResnetV1 (512-d, VGGFace2 weights looked up on
  disk); its usual rule, distance 1.1 between unit vectors, is a cosine of 0.4. It is
  differentiable, so the trainer's identity loss uses it.
- ``arcface``: insightface's ArcFace ONNX models (512-d) from ComfyUI's
  ``models/insightface`` folder, through onnxruntime; same person above about 0.35.
- ``clip``: OpenCLIP image embeddings of the whole image, for pets and objects (no face
  detection); same subject above about 0.85.

The reference of a subject is the mean of its photos' unit embeddings, renormalised
(reference 001's Face Distance Score), or each photo separately (reference 002's max/mean).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..core.deps import require
from .detect import Face, FaceDetector

log = logging.getLogger(__name__)


class NoFaceError(ValueError):
    pass


@dataclass
class Embeddings:
    vectors: np.ndarray  # [N, D] unit vectors (rows of zeros where no face was found)
    found: list[bool]

    @property
    def valid(self) -> np.ndarray:
        return self.vectors[np.array(self.found, bool)]


class IdentityEmbedder:
    name: str = ""
    builtin_threshold: float = 0.5  # documented in the module docstring
    dim: int = 0

    @property
    def threshold(self) -> float:
        """The calibrated threshold: the user's own (``persona calibrate --save``) when there
        is one, else the built-in one."""
        return calibrated_threshold(self.name)

    def __init__(self, detector: FaceDetector | None = None):
        self.detector = detector or FaceDetector()

    def _faces(self, images: Sequence[np.ndarray]) -> list[Face | None]:
        found = self.detector.detect(list(images), min_face_size=20)
        return [max(f, key=lambda x: x.area) if f else None for f in found]

    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        raise NotImplementedError

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a @ b.T


class DlibEmbedder(IdentityEmbedder):
    name = "dlib"
    builtin_threshold = 0.91
    dim = 128

    def __init__(self, detector: FaceDetector | None = None):
        super().__init__(detector)
        self._dlib = require("dlib", "The dlib identity embedder")
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None:
            require("face_recognition_models", "The dlib identity embedder")
        models = Path(spec.submodule_search_locations[0]) / "models"
        self._shape, self._rec = _dlib_models(str(models))

    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        vectors = np.zeros((len(images), self.dim), np.float32)
        found = []
        for i, (image, face) in enumerate(zip(images, self._faces(images))):
            if face is None:
                found.append(False)
                continue
            x1, y1, x2, y2 = [int(round(v)) for v in face.box]
            shape = self._shape(image, self._dlib.rectangle(x1, y1, x2, y2))
            chip = self._dlib.get_face_chip(image, shape, size=150, padding=0.25)
            v = np.asarray(self._rec.compute_face_descriptor(chip), np.float32)
            vectors[i] = v / np.linalg.norm(v)
            found.append(True)
        return Embeddings(vectors, found)


@functools.lru_cache(maxsize=1)
def _dlib_models(folder: str):
    import dlib

    return (dlib.shape_predictor(f"{folder}/shape_predictor_5_face_landmarks.dat"),
            dlib.face_recognition_model_v1(f"{folder}/dlib_face_recognition_resnet_model_v1.dat"))


class FacenetEmbedder(IdentityEmbedder):
    """InceptionResnetV1. ``weights='random'`` builds it untrained: only for exercising the
    code paths (tests, benchmarks); its scores mean nothing and a warning says so."""

    name = "facenet"
    builtin_threshold = 0.4
    dim = 512

    def __init__(self, detector: FaceDetector | None = None, weights: str = "vggface2", device: str = "cpu"):
        super().__init__(detector)
        self.model = facenet_model(weights, device)
        self.device = device

    def embed_tensor(self, images):
        """Differentiable: ``images`` [B, 3, H, W] in -1..1 (face crops) -> unit vectors [B, 512]."""
        import torch.nn.functional as F

        x = F.interpolate(images, size=(160, 160), mode="bilinear", align_corners=False)
        # facenet's fixed standardisation is (x*255 - 127.5) / 128, i.e. about x in -1..1
        return F.normalize(self.model(x * (127.5 / 128.0)), dim=1)

    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        import torch

        vectors = np.zeros((len(images), self.dim), np.float32)
        found = []
        crops, where = [], []
        for i, (image, face) in enumerate(zip(images, self._faces(images))):
            found.append(face is not None)
            if face is None:
                continue
            crops.append(_square_crop(image, face.box, 160, margin=0.2))
            where.append(i)
        if crops:
            x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1.0
            with torch.no_grad():
                vectors[where] = self.embed_tensor(x).cpu().numpy()
        return Embeddings(vectors, found)


def _square_crop(image: np.ndarray, box: np.ndarray, size: int, margin: float) -> np.ndarray:
    import cv2

    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    s = size / side
    m = np.array([[s, 0, size / 2 - cx * s], [0, s, size / 2 - cy * s]])
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


@functools.lru_cache(maxsize=4)
def facenet_model(weights: str, device: str):
    import torch

    facenet = require("facenet_pytorch", "The FaceNet identity embedder")
    model = facenet.InceptionResnetV1(pretrained=None, classify=False).eval().to(device)
    if weights == "random":
        log.warning("FaceNet identity encoder with RANDOM weights: its scores carry no identity "
                    "information (use only to exercise code paths)")
    elif weights == "vggface2":
        from ..core.weights import FACENET_VGGFACE2, find_weights

        state = torch.load(find_weights(FACENET_VGGFACE2), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        model.load_state_dict(state)
    else:
        raise ValueError(f"identity weights: 'vggface2' or 'random', got '{weights}'")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ArcFaceEmbedder(IdentityEmbedder):
    """ArcFace ONNX from insightface's model packs (buffalo_l ``w600k_r50.onnx`` or
    antelopev2 ``glintr100.onnx``), run with onnxruntime. Faces are aligned by their 5
    landmarks onto the standard 112 px ArcFace template, as insightface does."""

    name = "arcface"
    builtin_threshold = 0.35
    dim = 512

    def __init__(self, detector: FaceDetector | None = None, model_path: str | None = None):
        super().__init__(detector)
        ort = require("onnxruntime", "The ArcFace identity embedder")
        if model_path is None:
            from ..core.weights import ARCFACE_MODELS, find_first

            model_path = str(find_first(ARCFACE_MODELS))
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(model_path, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    @staticmethod
    def crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        from .align import face_template, similarity_transform
        import cv2

        m = similarity_transform(landmarks, face_template(112, 0.0))
        return cv2.warpAffine(image, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        vectors = np.zeros((len(images), self.dim), np.float32)
        found, crops, where = [], [], []
        for i, (image, face) in enumerate(zip(images, self._faces(images))):
            found.append(face is not None)
            if face is not None:
                crops.append(self.crop(image, face.landmarks))
                where.append(i)
        if crops:
            x = (np.stack(crops).astype(np.float32) - 127.5) / 127.5
            out = self.session.run(None, {self.input_name: x.transpose(0, 3, 1, 2)})[0]
            vectors[where] = out / np.linalg.norm(out, axis=1, keepdims=True)
        return Embeddings(vectors, found)


class ClipImageEmbedder(IdentityEmbedder):
    """CLIP image embeddings of the whole image, for subjects that are not faces (pets,
    objects): every image 'has' the subject, so nothing is faceless."""

    name = "clip"
    builtin_threshold = 0.85

    def __init__(self, model_name: str = "ViT-B-32", weights: str = "laion2b"):
        from ..core.clip_models import load_clip

        self.model, self.preprocess, _ = load_clip(model_name, weights)
        self.dim = int(self.model.visual.output_dim)

    def embed(self, images: Sequence[np.ndarray]) -> Embeddings:
        import torch
        from PIL import Image

        if len(images) == 0:
            return Embeddings(np.zeros((0, self.dim), np.float32), [])
        batch = torch.stack([self.preprocess(Image.fromarray(im)) for im in images])
        with torch.no_grad():
            v = self.model.encode_image(batch).float()
        v = torch.nn.functional.normalize(v, dim=1).numpy()
        return Embeddings(v, [True] * len(images))


Backend = Literal["dlib", "facenet", "arcface", "clip"]
EMBEDDERS: dict[str, type[IdentityEmbedder]] = {"dlib": DlibEmbedder, "facenet": FacenetEmbedder,
                                                "arcface": ArcFaceEmbedder, "clip": ClipImageEmbedder}
BACKENDS = tuple(EMBEDDERS)  # the one list of embedder names (CLI choices, node combos)


def calibrated_threshold(name: str) -> float:
    """The embedder's calibrated identity threshold (cosine), without loading it: the one
    ``persona calibrate --save`` derived from the user's photos, else the built-in one."""
    from .calibration import saved_threshold

    if name not in EMBEDDERS:
        raise ValueError(f"identity embedder: unknown '{name}' ({', '.join(BACKENDS)})")
    saved = saved_threshold(name)
    return EMBEDDERS[name].builtin_threshold if saved is None else saved


def thresholds_text() -> str:
    return ", ".join(f"{n} {calibrated_threshold(n):.2f}" for n in EMBEDDERS)


@functools.lru_cache(maxsize=6)
def get_embedder(name: Backend, weights: str | None = None) -> IdentityEmbedder:
    """``weights``: facenet 'vggface2'/'random'; arcface a .onnx path (default: looked up);
    clip 'laion2b'/'random'/a path."""
    calibrated_threshold(name)  # an unknown name is refused here
    if name == "dlib":
        return DlibEmbedder()
    if name == "facenet":
        return FacenetEmbedder(weights=weights or "vggface2")
    if name == "arcface":
        return ArcFaceEmbedder(model_path=weights)
    return ClipImageEmbedder(weights=weights or "laion2b")


@dataclass
class Reference:
    """A subject's reference photos, embedded once; scores embedded images against them:
    against the mean of the references' unit vectors, renormalised (``mean_reference``), or
    the max / mean over the individual references. Every reference needs a face."""

    embeddings: Embeddings

    def __post_init__(self):
        if len(self.embeddings.found) == 0:
            raise ValueError("reference: the reference batch is empty")
        missing = [i for i, ok in enumerate(self.embeddings.found) if not ok]
        if missing:
            raise NoFaceError(f"reference: no face found in reference image(s) {missing}")

    @property
    def mean(self) -> np.ndarray:
        mean = self.embeddings.vectors.mean(0)
        return mean / np.linalg.norm(mean)

    def scores(self, images: Embeddings, mode: Literal["mean_reference", "max", "mean"] = "mean_reference"
               ) -> np.ndarray:
        """Cosine identity score of each embedded image (NaN where it has no face)."""
        if mode == "mean_reference":
            sims = images.vectors @ self.mean
        else:
            pair = images.vectors @ self.embeddings.vectors.T
            sims = pair.max(1) if mode == "max" else pair.mean(1)
        return np.where(np.array(images.found, bool), sims, np.nan).astype(np.float64)

    def score(self, embedder: IdentityEmbedder, image: np.ndarray,
              mode: Literal["mean_reference", "max", "mean"] = "mean_reference") -> float | None:
        """The score of one image (None when it has no face)."""
        value = self.scores(embedder.embed([image]), mode)[0]
        return None if np.isnan(value) else float(value)


def reference_embedding(embedder: IdentityEmbedder, references: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of the references' unit embeddings, renormalised. Every reference needs a face."""
    if len(references) == 0:
        raise ValueError("reference: the reference batch is empty")
    return Reference(embedder.embed(references)).mean


def scores_from(images: Embeddings, references: Embeddings,
                mode: Literal["mean_reference", "max", "mean"] = "mean_reference") -> np.ndarray:
    """Scores of already embedded images against already embedded references (no embedding is redone)."""
    return Reference(references).scores(images, mode)


def identity_scores(embedder: IdentityEmbedder, images: Sequence[np.ndarray],
                    references: Sequence[np.ndarray], mode: Literal["mean_reference", "max", "mean"] = "mean_reference",
                    ) -> tuple[np.ndarray, list[bool]]:
    """Cosine identity score of each image (NaN where no face): against the mean reference,
    or the max / mean over the individual references."""
    if len(references) == 0:
        raise ValueError("reference: the reference batch is empty")
    emb = embedder.embed(images)
    return Reference(embedder.embed(references)).scores(emb, mode), emb.found


def copy_paste(generated: Embeddings, training: Embeddings, holdout: Embeddings) -> np.ndarray:
    """The copy-paste score of each generated image, NaN where it has no face; every
    reference needs a face.

    Scoring a generated face against the photos a LoRA trained on rewards copying: a model that
    pastes one training photo scores highest. Two measures separate likeness from copying (after
    WithAnyone, 2025):

    - **held-out identity** (``Reference(holdout).scores``): the cosine of a generated face to the
      mean embedding of photos of the subject held out of training (``persona prepare --holdout``);
    - **copy-paste score** (this function) of a generated face ``g``: ``max_t cos(g, t) - max_h cos(g, h)``, its
      similarity to the nearest *training* photo minus its similarity to the nearest *held-out*
      photo. A face that resembles the person equally well in every photo scores about 0 (a
      little above, as training photos are closer to each other in pose and light); a copy of a
      training photo scores high (its cosine to that photo is 1); a face nearer the unseen photos
      scores below 0. Reported as the mean over the generated images that have a face.
    """
    return Reference(training).scores(generated, "max") - Reference(holdout).scores(generated, "max")
