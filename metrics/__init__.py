"""Headless measurement of generated images: identity, SSIM, LPIPS, CLIP, KID/FID, the
composite Q_global, reports, tables and charts.

May import: ``core``, ``faces``."""
