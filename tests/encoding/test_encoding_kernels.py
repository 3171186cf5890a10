"""The encoding's compiled CPU kernels equal float64 references and the torch operations a GPU
runs (checked here on the CPU, since CI has no GPU)."""
import numpy as np
import pytest
import torch

from bids_vlm.encoding.kernels import (lag_terms_cpu, run_sums_cpu, subtract_sse,
                                       subtract_sse_torch)
from bids_vlm.encoding.ridge import lag_terms_torch, run_sums_torch


def _series(rng, n, nb, scale=1.0):
    """(n, nb) float32 autocorrelated series with an offset, a constant column (3) and a tiny
    one (5)."""
    x = rng.standard_normal((n, nb))
    x[1:] += 0.6 * x[:-1]
    x = (x * scale + 4.0 * scale).astype(np.float32)
    x[:, 3] = 2.5
    x[:, 5] = (x[:, 5] - x[:, 5].mean()) * 1e-9
    return x


def test_subtract_sse_is_the_mean_squared_error_per_alpha():
    rng = np.random.default_rng(0)
    n_alpha, n_te, nb = 4, 13, 37
    pred = rng.standard_normal((n_alpha * n_te, nb)).astype(np.float32)
    y_te = rng.standard_normal((n_te, nb)).astype(np.float32)
    start = rng.standard_normal((n_alpha, nb))
    want = start - ((pred.reshape(n_alpha, n_te, nb).astype(np.float64) - y_te) ** 2).mean(1)
    for fn in (subtract_sse, subtract_sse_torch):
        score = torch.from_numpy(start.copy())
        fn(score, torch.from_numpy(pred), torch.from_numpy(y_te))
        np.testing.assert_allclose(score.numpy(), want, rtol=1e-6, atol=1e-6)


def test_subtract_sse_takes_a_gathered_test_set():
    """y_te as the solver passes it: rows gathered from the training frames."""
    rng = np.random.default_rng(1)
    y_tr = torch.from_numpy(rng.standard_normal((40, 19)).astype(np.float32))
    te = torch.tensor([3, 7, 8, 20, 33])
    pred = torch.from_numpy(rng.standard_normal((2 * 5, 19)).astype(np.float32))
    a, b = torch.zeros(2, 19, dtype=torch.float64), torch.zeros(2, 19, dtype=torch.float64)
    subtract_sse(a, pred, y_tr[te])
    subtract_sse_torch(b, pred, y_tr[te])
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def _reference_sums(p, y):
    p, y = p.astype(np.float64), y.astype(np.float64)
    pc, yc = p - p.mean(0), y - y.mean(0)
    return np.stack([(yc ** 2).sum(0), (pc ** 2).sum(0), (yc * pc).sum(0),
                     ((y - p) ** 2).sum(0)])


def test_run_sums_cpu_is_float64_and_exact_for_a_constant_series():
    rng = np.random.default_rng(2)
    p, y = _series(rng, 57, 29, 3.0), _series(rng, 57, 29)
    got = run_sums_cpu(torch.from_numpy(p), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, _reference_sums(p, y), rtol=1e-12, atol=1e-30)
    assert got[1, 3] == 0.0 and got[2, 3] == 0.0  # the constant prediction: exactly 0
    torch_sums = run_sums_torch(torch.from_numpy(p), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(torch_sums[:, 6:], got[:, 6:], rtol=2e-5)  # float32 sums


def test_run_sums_cpu_takes_a_transposed_view():
    rng = np.random.default_rng(3)
    p = torch.from_numpy(rng.standard_normal((21, 40)).astype(np.float32)).T  # (40, 21) view
    y = torch.from_numpy(rng.standard_normal((40, 21)).astype(np.float32))
    np.testing.assert_allclose(run_sums_cpu(p, y).numpy(),
                               _reference_sums(p.numpy(), y.numpy()), rtol=1e-12)


def _reference_lags(p, n_lags):
    p = p.astype(np.float64)
    c = p - p.mean(0)
    ss = (c ** 2).sum(0)
    varying = np.sqrt(ss / len(p)) > 1e-12
    rho = np.stack([(c[:-k] * c[k:]).sum(0) for k in range(1, n_lags + 1)]
                   or [np.zeros(p.shape[1])], 1)[:, :n_lags]
    rho = np.where(varying[:, None], rho / np.where(varying, ss, 1.0)[:, None], 0.0)
    return np.column_stack([rho, varying.astype(float)])


@pytest.mark.parametrize("n_lags", [0, 6, 70])
def test_lag_terms_cpu_are_the_centred_autocorrelations(n_lags):
    """rho(1..K) and 1, both 0 for a constant prediction; a tiny one keeps its rho; lags past
    the run are 0."""
    rng = np.random.default_rng(4)
    p = _series(rng, 64, 23)
    got = lag_terms_cpu(torch.from_numpy(p), n_lags).numpy()
    want = _reference_lags(p, min(n_lags, 63))
    np.testing.assert_allclose(got[:, :want.shape[1] - 1], want[:, :-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got[:, -1], want[:, -1])
    assert (got[:, want.shape[1] - 1:-1] == 0).all()
    assert got[3].sum() == 0.0 and got[5, -1] == 1.0
    if n_lags:
        assert abs(got[5, 0] - want[5, 0]) < 1e-6 and got[5, 0] != 0.0


def test_lag_terms_cpu_equal_the_torch_operations():
    rng = np.random.default_rng(5)
    p = torch.from_numpy(_series(rng, 80, 31))
    got = lag_terms_cpu(p, 9).numpy()
    want = lag_terms_torch(p, 9).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
