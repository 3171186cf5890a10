"""What the association's significance rests on: the exact null variance's noise factors, the
two-stage selective FDR applied to its discoveries, and the method text of the sidecars.

:mod:`bids_vlm.stats.association` streams the statistics; this module prepares the voxel
side of the null variance (:func:`noise_model`) and post-processes its result
(:func:`selective`).
"""
from __future__ import annotations

import numpy as np

from bids_vlm.stats.autocorr import demean_traces, lag_sums, noise_factors
from bids_vlm.stats.fdr import simes_and_selective

def method_description(autocorr: str = "exact", n_lags: int | None = None,
                       fdr_scope: str = "selective", bn_definition: str = "marginal",
                       nuisance_pcs: int = 0) -> str:
    """Human-readable description of the association test, for sidecars and reports."""
    base = "Pearson r between each AN regressor and each voxel over all frames; "
    if bn_definition == "unique":
        base = ("partial Pearson r between each AN regressor and each voxel over all frames, "
                "with the stream's stimulus-presence regressor and the layer's top "
                f"{nuisance_pcs} principal components of its AN regressors removed from both "
                "(BNs unique to the AN, --bn-definition unique); ")
    lags = f"{n_lags} lags" if n_lags else "about 2 sqrt(run length) lags"
    if autocorr == "exact":
        test = ("z = atanh(r) sqrt(T_eff - 3), T_eff = 1 / Var(r) the exact null variance of r "
                "for the cleaned regressor given the cleaning projection M and the voxel's "
                "stationary noise autocorrelation estimated from its detrended, uncleaned "
                f"series (within runs, Tukey taper, {lags}): Var(r) = (1 + 2 sum_k rho_x(k) "
                "rho_S(k)) / (tr M + 2 sum_k rho_S(k) sum_t M[t, t+k]); ")
    elif autocorr == "bartlett":
        test = ("z = atanh(r) sqrt(T_eff - 3) with the effective number of frames from "
                "Bartlett's stationary variance of r for two autocorrelated series "
                "(autocorrelations "
                f"within runs, Tukey taper, {lags}); ")
    else:
        test = ("z = atanh(r) sqrt(T - 3), frames treated as independent (not corrected for "
                "temporal autocorrelation); ")
    return base + test + "two-sided; " + FDR_TEXT[fdr_scope]


FDR_TEXT = {
    "selective": "two-stage selective inference (Benjamini & Bogomolov 2014): a Simes p per AN "
                 "across in-mask voxels, Benjamini-Hochberg across the layer's N ANs at q "
                 "selects R ANs, then Benjamini-Hochberg across voxels within each selected AN "
                 "at q R / N; controls the FDR of the ANs declared to have BNs (among the "
                 "layer's ANs) and the FDR of BNs averaged over the selected ANs",
    "an": "Benjamini-Hochberg FDR across in-mask voxels for each AN; controls the FDR of each "
          "AN's BNs, not how many ANs get a false BN (each null AN up to q)",
    "all": "one Benjamini-Hochberg FDR across all AN x in-mask voxel pairs of the layer; "
           "controls the FDR of the layer's pooled AN-BN pairs, not per AN"}


def noise_model(voxels, autocorr, run_lengths, n_lags, n_removed, noise_sums, lag_traces):
    """(V, K + 1) voxel factors of the exact null variance, or None for the other methods."""
    if autocorr != "exact":
        return None
    if noise_sums is None:
        noise_sums = lag_sums(voxels, run_lengths, n_lags)
    if lag_traces is None:
        lag_traces = demean_traces(run_lengths, n_lags, n_removed)
    if np.asarray(noise_sums).shape[1] != voxels.shape[1]:
        raise ValueError(f"noise lag sums are for {np.asarray(noise_sums).shape[1]} voxels, "
                         f"not {voxels.shape[1]}")
    return noise_factors(noise_sums, lag_traces, n_lags)


def selective(res, q, n_vox, apply: bool):
    """An :class:`~bids_vlm.stats.association.AssociationResult` with each AN's Simes p
    (``p_an``) and, when ``apply``, the entries and per-AN summaries of
    the selective procedure (:func:`bids_vlm.stats.fdr.simes_and_selective`)."""
    keep, res.p_an, thr = simes_and_selective(res.an_index, res.p, len(res.n_pos), n_vox, q)
    if not apply:
        return res
    for name in ("an_index", "voxel_index", "r", "z"):
        setattr(res, name, getattr(res, name)[keep])
    n_an = len(res.n_pos)
    res.n_pos = np.bincount(res.an_index[res.r > 0], minlength=n_an)
    res.n_neg = np.bincount(res.an_index[res.r < 0], minlength=n_an)
    res.bn_count = np.bincount(res.voxel_index, minlength=n_vox)
    res.z_threshold = thr
    return res
