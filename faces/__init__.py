"""Faces: detection (MTCNN), alignment, quality filtering, preprocessing, captions, masks, the
dataset builder, identity embedders and the embedded sample photos.

May import: ``core``."""
