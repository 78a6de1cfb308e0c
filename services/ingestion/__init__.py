"""Ingestion: validates raw events and labels against the contracts; rejects to DLQs."""
