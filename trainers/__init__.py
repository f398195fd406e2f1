"""Headless training: config, dataset, memory techniques, loop, export."""
