"""Stage 7: neuron-level analyses of the association results (docs/METHOD.md section 8)."""
