"""Stage 7: neuron-level analyses of the association results (METHOD.md section 8)."""
