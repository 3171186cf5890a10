"""Stage 9: the HTML reports (participant and group)."""
