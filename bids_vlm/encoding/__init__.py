"""Stage 6b: layer-wise encoding: leave-one-run-out ridge (and banded ridge across streams),
noise ceiling, and the paper mode's atoms (docs/METHOD.md section 7)."""
