"""Retraining controller and model registry."""
