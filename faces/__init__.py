"""Face detection, alignment, quality filtering, preprocessing and dataset building."""
