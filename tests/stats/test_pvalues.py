"""p from z (:mod:`bids_vlm.stats.pvalues`): the compiled p is scipy's, and the Simes p from z
is the one the sorted p give, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from bids_vlm.stats import pvalues
from bids_vlm.stats.pvalues import p_from_z, p_values


def test_compiled_p_equals_scipy():
    """The compiled two-sided p is scipy's, bit for bit, from z = 0 to underflow and inf."""
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.uniform(0, 2, 200000), rng.uniform(0, 12, 200000),
                        rng.uniform(0, 45, 100000), -rng.uniform(0, 12, 1000),
                        [0, 1.4142135, 1.4142137, 11.313708, 11.31371, 37.5, 37.6, 38.5, np.inf]])
    z = z.astype(np.float32)
    np.testing.assert_array_equal(p_values(z), p_from_z(z))


@pytest.mark.parametrize("seed", range(4))
def test_simes_from_z_equals_the_sorted_p(seed):
    """The Simes p from z (p evaluated only in the bins that can hold the minimum) is the
    minimum over the sorted p_values(z), bit for bit: rows of one entry, ties, |z| over a
    wide range (up to p = 0 past |z| = 38), both signs, wider than the bins."""
    rng = np.random.default_rng(seed)
    hist, buf = np.empty(pvalues.SIMES_BINS, np.int64), np.empty(20000, np.float32)
    rows = [np.float32([4.5]), np.float32([-3.0, 3.0, 3.0, -3.0]),
            rng.uniform(2.0, 40.0, 3000).astype(np.float32),
            np.float32(rng.choice([-1, 1], 5000) * 10 ** rng.uniform(0.3, 1.5, 5000)),
            np.repeat(np.float32(rng.uniform(2, 6, 50)), 40)]
    for z in rows:
        for n_vox in (len(z), 20000, 235375):
            p = np.sort(p_values(z))
            want = np.min(n_vox * p / np.arange(1, len(p) + 1))
            assert pvalues.simes_z(z, float(n_vox), hist, buf) == want
