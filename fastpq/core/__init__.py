"""The engine: categories, segment tables, input adapters, matching, sums, accumulator, result."""
