"""label_join: joins predictions with their ground-truth labels, in either arrival order."""
