"""Rivulet's common package: contracts, topic catalog, settings, spec, and clients."""
