"""Stage 1-2: the BIDS dataset, its runs, events and stimulus files (docs/METHOD.md sections 1-2)."""
