"""BNs that belong to their AN (``--bn-definition unique``, the default).

A voxel that responds only to "something is on screen" correlates with every AN whose
activation is positive when a stimulus is shown, and an AN that shares its time course with
the rest of its layer lends its BNs to all of them. Before the association, both sides (a
layer's cleaned AN regressors and the cleaned voxels) are therefore residualised on:

- the stream's stimulus-presence regressor (HRF-convolved on/off of any stimulus of the
  stream, cleaned like the regressors), and
- the layer's top ``n_pcs`` principal components of its cleaned AN regressors,

so that what remains is each AN's own part. This is a partial correlation: r between x~ and
y~ with the nuisance columns P removed from both. The columns lie in the cleaned space, so the
cleaning projection becomes M - P P' (``lag_traces`` minus P P''s own, ``n_dof`` minus the
columns), which keeps the exact null variance exact. ``--bn-definition marginal`` is the
paper's plain correlation.
"""
from __future__ import annotations

import numpy as np
import torch

from bids_vlm.stats.autocorr import noise_factors
from bids_vlm.stats.blockscan import Voxels
from bids_vlm.stats.association import associate

BN_DEFINITIONS = ("unique", "marginal")
N_PCS = 3  # default --nuisance-pcs (benchmarks/bench_calibration.py, correlated-AN row)


def nuisance_basis(regressors: np.ndarray, presence: np.ndarray | None = None,
                   n_pcs: int = N_PCS) -> np.ndarray:
    """(T, s) orthonormal columns: the presence regressor(s) (T,) or (T, p) and the top
    ``n_pcs`` principal components of the regressors (T, N) (each column centred); columns
    that are zero or collinear are dropped."""
    x = np.asarray(regressors, np.float64)
    x = x - x.mean(0)
    parts = []
    if presence is not None:
        pres = np.asarray(presence, np.float64).reshape(len(x), -1)
        parts.append(pres - pres.mean(0))
    if n_pcs > 0 and x.shape[1]:
        parts.append(top_components(x, n_pcs))
    if not parts:
        return np.zeros((len(x), 0))
    cols = np.column_stack(parts)
    norms = np.linalg.norm(cols, axis=0)
    cols = cols[:, norms > 1e-8 * max(norms.max(initial=0.0), 1e-300)]
    if not cols.shape[1]:
        return np.zeros((len(x), 0))
    u, sv, _ = np.linalg.svd(cols / np.linalg.norm(cols, axis=0), full_matrices=False)
    return u[:, sv > 1e-6]


GRAM_FLOOR = 1e-6  # the Gram's eigenvalues kept without the SVD: above this x the largest


def top_components(x: np.ndarray, n_pcs: int) -> np.ndarray:
    """(T, k) the top k <= n_pcs principal components of the centred x (T, N) float64, each
    scaled by its singular value; components with a singular value <= 1e-8 x the largest are
    left out. From the eigendecomposition of the smaller Gram matrix (x x' or x' x; about 10x
    faster than the SVD of a 600 x 3,072 layer) when every component it gives is well above
    that floor (eigenvalues > :data:`GRAM_FLOOR` x the largest, where the Gram's rounding is
    far below them); otherwise, near rank deficiency, from the SVD of x."""
    wide = x.shape[0] <= x.shape[1]
    lam, vec = np.linalg.eigh(x @ x.T if wide else x.T @ x)
    lam, vec = lam[::-1][:n_pcs], vec[:, ::-1][:, :n_pcs]
    if lam[0] > 0 and lam[-1] > GRAM_FLOOR * lam[0]:
        sv = np.sqrt(lam)
        return vec * sv if wide else x @ vec  # x v = u sv
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    keep = sv[:n_pcs] > 1e-8 * max(sv[0], 1e-300)
    return u[:, :n_pcs][:, keep] * sv[:n_pcs][keep]


def residualise(regressors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(T, N) the regressors with the basis (T, s) projected out, float32."""
    x = np.asarray(regressors, np.float64)
    return (x - basis @ (basis.T @ x)).astype(np.float32)


def removed_share(regressors: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """(N,) share of each AN's (centred) variance the nuisance columns explained; 0 for a
    constant AN."""
    x = np.asarray(regressors, np.float64)
    total = ((x - x.mean(0)) ** 2).sum(0)
    left = ((residual - residual.mean(0)) ** 2).sum(0)
    return np.divide(total - left, total, out=np.zeros(x.shape[1]), where=total > 1e-12)


def mean_abs_r(regressors: np.ndarray, sample: int = 512, seed: int = 0) -> np.ndarray:
    """(N,) each AN's mean |r| with the other ANs of its layer (a seeded sample of at most
    ``sample`` of them); NaN with a single AN."""
    x = np.asarray(regressors, np.float64)
    x = x - x.mean(0)
    norm = np.linalg.norm(x, axis=0)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)
    n = x.shape[1]
    if n < 2:
        return np.full(n, np.nan)
    others = np.sort(np.random.default_rng(seed).permutation(n)[:min(sample, n)])
    r = np.abs(x.T @ x[:, others])  # (N, s)
    r[others, np.arange(len(others))] = np.nan  # not with itself
    return np.nanmean(r, axis=1)


def lag_traces_of(basis: np.ndarray, run_lengths, n_lags: int) -> np.ndarray:
    """(n_lags + 1,) sum_t (B B')[t, t+k] of the basis (T, s) within runs."""
    out, start = np.zeros(n_lags + 1), 0
    for n in run_lengths:
        seg = basis[start:start + n]
        out += [(seg[:n - k] * seg[k:]).sum() if k < n else 0.0 for k in range(n_lags + 1)]
        start += n
    return out


def project_voxels(vox: Voxels, basis: np.ndarray, noise_sums=None, lag_traces=None,
                   scratch: dict | None = None) -> Voxels:
    """The prepared voxels (:func:`bids_vlm.stats.association.prepare_voxels`) with the
    basis (T, s) projected out of every row and the rows renormalised: the residualised
    cleaned voxels, prepared. The exact method's factors use the cleaning traces minus the
    basis's own (``noise_sums``, ``lag_traces`` as given to prepare_voxels; needed for it).
    scratch: a dict whose arrays the result is written into and kept, for the next call with
    voxels of the same shapes (one layer after another: the result is then valid until the
    next call given it); by default new arrays."""
    if not basis.shape[1]:
        return vox
    b = torch.as_tensor(basis, dtype=torch.float32, device=vox.y.device)
    y = torch.addmm(vox.y, vox.y @ b, b.T, alpha=-1.0, out=_like(scratch, "y", vox.y))
    norm = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    y *= torch.where(norm > 1e-6, 1.0 / norm.clamp(min=1e-30), 0.0)
    acf = vox.acf
    if vox.autocorr == "exact":
        n_lags = acf.shape[1] - 1
        traces = np.asarray(lag_traces, float)[:n_lags + 1] - \
            lag_traces_of(basis, vox.run_lengths, n_lags)
        acf = _like(scratch, "acf", acf).copy_(acf)
        acf[:vox.n_vox] = noise_factors(noise_sums, traces, n_lags).to(acf.device)
    return Voxels(y=y, acf=acf, n_vox=vox.n_vox, n_dof=vox.n_dof - basis.shape[1],
                  run_lengths=vox.run_lengths, autocorr=vox.autocorr)


def _like(scratch: dict | None, key: str, ref: torch.Tensor) -> torch.Tensor:
    """scratch[key] when it has ref's shape, type and device (else a new array kept there);
    a new array without scratch."""
    have = None if scratch is None else scratch.get(key)
    if have is None or have.shape != ref.shape or have.dtype != ref.dtype or \
            have.device != ref.device:
        have = torch.empty_like(ref)
        if scratch is not None:
            scratch[key] = have
    return have


def layer_association(x, prepared: Voxels, presence=None, definition: str = "unique",
                      n_pcs: int = N_PCS, noise_sums=None, lag_traces=None, n_removed: int = 0,
                      scratch: dict | None = None, **kwargs):
    """:func:`bids_vlm.stats.association.associate` of one layer's regressors x (T, N) with
    the prepared voxels under ``definition``: ``marginal`` as they are; ``unique`` with the
    presence regressor(s) and the top ``n_pcs`` components projected out of both sides
    (scratch: :func:`project_voxels`'s, reused by the layers of one unit). kwargs: the rest
    of associate's arguments. Returns (result, removed share (N,) or None)."""
    if definition not in BN_DEFINITIONS:
        raise ValueError(f"bn definition must be one of {BN_DEFINITIONS}, not '{definition}'")
    if definition == "marginal":
        return associate(x, prepared, n_removed=n_removed, **kwargs), None
    basis = nuisance_basis(x, presence, n_pcs)
    own = residualise(x, basis)
    vox = project_voxels(prepared, basis, noise_sums, lag_traces, scratch)
    res = associate(own, vox, n_removed=n_removed + basis.shape[1], **kwargs)
    return res, removed_share(x, own)
