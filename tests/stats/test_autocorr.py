"""The exact null's voxel factors: the compiled loop gives the values of the torch operations
it replaced, bit for bit."""
import numpy as np
import pytest
import torch

from bids_vlm.stats.autocorr import noise_factors, tukey_taper


def _torch_factors(noise_sums, traces, n_lags):
    """The former implementation (float64 torch operations over (K, V) arrays)."""
    sums = torch.as_tensor(np.asarray(noise_sums)[:n_lags + 1], dtype=torch.float64)
    m = torch.as_tensor(np.asarray(traces, dtype=np.float64)[:n_lags + 1])
    energy = sums[0]
    rho = torch.where(energy > 1e-12, sums[1:] / energy.clamp(min=1e-30), 0.0)
    a = 2.0 * torch.from_numpy(tukey_taper(n_lags))[:, None] * rho
    den = (m[0] + (a * m[1:, None]).sum(0)).clamp(min=4.0)
    out = torch.cat([a, torch.ones(1, a.shape[1], dtype=a.dtype)]) / den
    return out.T.float().contiguous()


@pytest.mark.parametrize("n_vox", [1, 63, 1000])
def test_noise_factors_equal_the_torch_operations(n_vox):
    rng = np.random.default_rng(n_vox)
    n_lags = 12
    sums = rng.standard_normal((n_lags + 3, n_vox)) * 5
    sums[0] = 200 + rng.random(n_vox) * 50
    sums[0, ::7] = 0.0  # excluded voxels: no autocorrelation
    traces = np.concatenate([[190.0], -rng.random(n_lags + 2) * 3])
    traces_small = traces.copy()
    traces_small[0] = 2.0  # a denominator below 4: clamped
    for m in (traces, traces_small):
        got = noise_factors(sums, m, n_lags)
        assert got.dtype == torch.float32 and got.shape == (n_vox, n_lags + 1)
        assert torch.equal(got, _torch_factors(sums, m, n_lags))


def test_noise_factors_need_every_lag():
    with pytest.raises(ValueError, match="cover lags"):
        noise_factors(np.ones((3, 4)), np.ones(5), 4)
