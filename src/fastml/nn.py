"""Modules for training loops (placeholder, filled in below)."""
