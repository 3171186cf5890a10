"""The group level's BIDS-Derivatives: maps and tables over participants."""
