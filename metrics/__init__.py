"""Headless measurement of generated images."""
