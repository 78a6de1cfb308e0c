"""Model serving: FastAPI ``POST /predict`` over online features, with hot model swaps."""
