"""Rivulet services: one sub-package per process, talking only over Kafka topics."""
