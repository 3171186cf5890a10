"""Stage 4-5: the design: HRF regressors of the ANs, and the cleaned BOLD (docs/METHOD.md sections 4-5)."""
