"""Headless measurement of generated images: identity, SSIM, LPIPS, CLIP, KID/FID, the
composite Q_global, DINO and DreamBench, identity per subject in pictures of several
subjects (``group``), reports, tables and charts.

May import: ``core``, ``faces``."""
