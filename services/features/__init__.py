"""Online feature aggregation: events.valid -> per-entity windowed features in Redis."""
