"""performance: online model metrics per model version and slice, measured or estimated."""
