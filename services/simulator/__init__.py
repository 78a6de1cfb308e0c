"""Demo traffic: a seeded card-fraud world driven through Rivulet's public contract only."""
