"""The metrics scored on the engine's per-image pair tables: PQ and its variants."""
