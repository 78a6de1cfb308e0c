"""Drift detection: data, prediction and concept drift alerts on ``drift.alerts``."""
