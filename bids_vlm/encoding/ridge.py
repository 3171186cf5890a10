"""Layer-wise encoding (docs/METHOD.md 7): ridge regression from one layer's AN regressors to every
voxel, scored on held-out runs.

Outer cross-validation leaves one run out; inside the training runs, the ridge penalty of each
voxel is chosen by cross-validation over whole runs (at most ``max_inner_folds`` groups of runs;
contiguous folds when there is a single training run). The engine
(:mod:`bids_vlm.encoding.ridge_solver`) makes the choices of himalaya's ``RidgeCV`` /
``KernelRidgeCV`` (mean inner-fold squared error per alpha) from one eigendecomposition per
(outer, inner) fold, so that every alpha and voxel costs only float32 products with the voxels;
torch on the CPU or the GPU (backend ``torch_cuda``), voxels in batches, one progress bar per
layer. Scores: Pearson r and R^2 of the held-out predictions over all held-out frames (each
run's frames z-scored), per voxel.

Significance of a held-out r (:func:`heldout_z`). A held-out run's prediction comes from a
model fitted on the other runs only, so under the null (the voxel's series unrelated to the
features) it is a fixed series independent of that run's noise, and that run's r is the
correlation of a fixed cleaned regressor with the cleaned voxel, whose null variance is the
association's ``exact`` one (:mod:`bids_vlm.stats.autocorr`). The held-out r pools the runs
(each z-scored): r = sum_runs (n_run / T) r_run, so

    Var_folds(r) = (1 + 2 sum_k rho_p(k) w_k rho_S(k)) / (m_0 + 2 sum_k w_k rho_S(k) m_k)

with rho_p(k) = sum_runs (n_run / T) rho_p,run(k) the prediction's autocorrelation within each
held-out run, weighted as the runs are in r (a run whose prediction is constant adds nothing
to r, and n_run / T to neither term), rho_S the voxel's noise autocorrelation before cleaning
(Tukey taper w_k) and m_k the lag traces of the cleaning projections (the denominator is
apportioned to the runs by their length: exact for runs of equal length and cleaning).

That would be Var(r) if the runs' r were independent; they are not. Run j's prediction is
fitted on run i's data and run i's on run j's, so with a linear ridge fit both r_i and r_j
contain the same product y_i' X_i A X_j' y_j of the two runs' noise (A the ridge inverse, the
same for both folds when the penalty dominates, the usual fit of a null voxel): the null
variance of the pooled r is Var_folds plus a cross-fold covariance that is at most Var_folds
(Cauchy-Schwarz) and equal to it when the folds' ridge inverses agree. Var(r) =
:data:`CROSS_FOLD` x Var_folds = 2 Var_folds, exact for strongly penalised fits, conservative
otherwise (simulated null voxels, AR(1) 0.6 noise, confounds and DCT cleaning, 2-3 runs:
with Var_folds alone z has SD 1.41 and a one-sided false-positive rate of 0.12 at 0.05; with
2 Var_folds, SD 0.96-0.99 and 0.044-0.049 for 40-800 features, 0.040 for 10; a prediction
fixed in advance, with Var_folds, 0.049; ``tests/encoding/test_ridge.py``).
z = atanh(r) sqrt(1 / Var(r) - 3), one-sided (r > 0).

Preferred layer (:func:`preferred_layer`): the layer with the highest held-out r, kept only
where it is significant: its one-sided p, times the number of layers (Bonferroni for having
picked the best of them), passes Benjamini-Hochberg across voxels at q; elsewhere -1.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from himalaya.backend import get_backend, set_backend

from bids_vlm.config import EncodingConfig
from bids_vlm.stats.autocorr import (default_lags, demean_traces, noise_factors,
                                     row_autocorrelations, lag_sums as _lag_sums)
from bids_vlm.encoding.folds import run_splits
from bids_vlm.encoding.kernels import lag_terms_cpu, run_sums_cpu
from bids_vlm.encoding.ridge_solver import device_of, loro_blocks
from bids_vlm.progress import progress as progress_bar

ALPHAS = np.array(EncodingConfig.alphas)  # the default penalties: the configuration's
CROSS_FOLD = 2.0  # null variance of the pooled held-out r / that of independent folds (bound)


def method_description(alphas=ALPHAS, alpha_cv: str = "nested") -> str:
    """The encoding's method, for sidecars and reports; alpha_cv as :func:`encode_layer`."""
    where = ("the training runs" if alpha_cv == "nested" else
             "every run, once per layer (--alpha-cv shared: the held-out run takes part in "
             "choosing its penalty, not in fitting its weights)")
    return ("ridge regression from the layer's AN regressors to each voxel; "
            f"leave-one-run-out; penalty per voxel by cross-validation over {where} "
            f"among {[float(a) for a in alphas]} (the least mean squared error over the inner "
            "folds, as himalaya's RidgeCV chooses it); held-out Pearson r and R^2 over all "
            "held-out frames")


def z_description() -> str:
    """The null of a held-out r behind its z (:func:`heldout_z`), for sidecars and reports."""
    return ("z = atanh(r) sqrt(1 / Var(r) - 3) of the held-out r, Var(r) twice the exact null "
            "variance of a correlation between a fixed series and the voxel (the held-out "
            "prediction's autocorrelation within runs; the voxel's noise autocorrelation from "
            "its detrended uncleaned series, Tukey taper, and the cleaning projection's lag "
            "traces), twice because the leave-one-run-out folds share each pair of runs' noise "
            "(a bound, exact for strongly penalised fits)")


def preferred_description(q: float) -> str:
    """The test behind the preferred layer, for sidecars and reports."""
    return ("the layer with the highest held-out r at the voxel, kept only where that r is "
            f"significant: {z_description()}; one-sided p (r > 0) times the number of "
            "analysed layers of the stream (Bonferroni for picking the best layer), "
            f"Benjamini-Hochberg across in-mask voxels at q = {q:g}; -1 (no preferred layer) "
            "where the best layer is not significant")


@dataclass
class EncodingResult:
    """Held-out scores of one layer. r, r2, alpha: (V,) (alpha: median over outer folds);
    predictions: (T, V) held-out predictions when asked for, else None; z: (V,) the held-out
    r's z under its exact null (:func:`heldout_z`) when asked for, else None."""

    r: np.ndarray
    r2: np.ndarray
    alpha: np.ndarray
    predictions: np.ndarray | None = None
    z: np.ndarray | None = None


@contextlib.contextmanager
def himalaya_backend(name):
    """Use himalaya backend ``name`` ('numpy', 'torch', 'torch_cuda') inside the block."""
    previous = get_backend()
    set_backend(name, on_error="raise")
    try:
        yield get_backend()
    finally:
        set_backend(previous)


def fold_predict(x, y, runs, k: int, alphas=ALPHAS, max_inner_folds=5,
                 n_targets_batch=20000):
    """Fold k of the leave-one-run-out ridge, on the device of the active himalaya backend
    (:func:`himalaya_backend`; 'torch_cuda' -> CUDA): fitted on every run but ``runs[k]``
    (alphas by the inner run-wise CV), it predicts ``runs[k]``.

    x: (T, F) features; y: (T, V) voxels; runs: :func:`run_splits`. Returns the prediction
    (len(runs[k]), V) float32 and the chosen alphas (V,)."""
    alphas = np.asarray(alphas, np.float64)
    pred = np.empty((len(runs[k]), y.shape[1]), np.float32)
    best = np.empty(y.shape[1], np.int64)
    def finish(k, start, p, y_test, b):  # in the solver's worker threads
        return start, p.cpu().numpy(), b.cpu().numpy()

    for start, p, b in loro_blocks(x, y, runs, alphas, max_inner_folds,
                                   device_of(get_backend().name), [k], n_targets_batch, finish):
        pred[:, start:start + p.shape[1]], best[start:start + p.shape[1]] = p, b
    return pred, alphas[best].astype(np.float32)


def encode_layer(x, y, run_lengths, alphas=ALPHAS, backend="numpy", n_targets_batch=20000,
                 max_inner_folds=5, keep_predictions=False, with_z=False, noise_sums=None,
                 lag_traces=None, n_lags=None, progress=False, desc=None,
                 alpha_cv="nested", null=None) -> EncodingResult:
    """Leave-one-run-out ridge from features x (T, F) to voxels y (T, V); needs >= 2 runs.

    y: a NumPy array or a torch tensor (kept where it is: one already on the GPU is not
    copied back). backend: 'numpy' / 'torch' (CPU) or 'torch_cuda'; voxels in batches of at
    most n_targets_batch. with_z: also the z of each held-out r (:func:`heldout_z`); x and y
    must then be cleaned by the same projection (the prediction must be a cleaned series).
    noise_sums (>= K + 1, V), lag_traces (>= K + 1,): the voxels' noise lag sums before
    cleaning and the cleaning's lag traces, pooled over runs (as the association takes them;
    default the voxels' own lag sums and each run's mean removal); n_lags: K (default
    :func:`default_lags`). progress: a progress bar over the folds x voxel batches, titled
    ``desc`` (silenced by ``bids_vlm -q``). alpha_cv: "nested" (each held-out run's alphas
    chosen by inner folds of the other runs) or "shared" (once, by inner folds over every run:
    :class:`~bids_vlm.encoding.ridge_solver.SharedAlphas`). null: :func:`null_terms` of y
    when computed once for several layers (then noise_sums and lag_traces are not read)."""
    runs = run_splits(run_lengths)
    if len(runs) < 2:
        raise ValueError("layer-wise encoding needs at least 2 runs (leave-one-run-out)")
    alphas = np.asarray(alphas, np.float64)
    n_vox = y.shape[1]
    pred = np.zeros(y.shape, dtype=np.float32) if keep_predictions else None
    chosen = np.empty((len(runs), n_vox), np.int64)
    sums = np.empty((len(runs), 4, n_vox))  # per held-out run: see run_sums
    n_lags = n_lags or default_lags(run_lengths)
    terms = np.zeros((n_vox, n_lags + 1)) if with_z else None

    def finish(k, start, p, y_test, best):  # per block, in the solver's worker threads
        p = p.contiguous()
        sums_k = run_sums(p, y_test)
        lag = _lag_terms(p, n_lags, sums_k[1]).cpu().numpy() if with_z else None
        return (k, start, best.cpu().numpy(), sums_k.cpu().numpy(), lag,
                p.cpu().numpy() if keep_predictions else None)

    blocks = loro_blocks(x, y, runs, alphas, max_inner_folds, device_of(backend),
                         batch=n_targets_batch, finish=finish, alpha_cv=alpha_cv)
    with progress_bar(None, progress, desc=desc, unit="batch", total=blocks.steps) as bar:
        for k, start, best, sums_k, lag, p in blocks.iterate(tick=bar.update):
            cols = slice(start, start + len(best))
            chosen[k, cols], sums[k, :, cols] = best, sums_k
            if with_z:
                terms[cols] += lag * (len(runs[k]) / len(y))
            if keep_predictions:
                pred[runs[k], cols] = p
            bar.update()
    r, r2 = scores_from_sums(sums, runs)
    z = None
    if with_z:
        z = heldout_z(r, terms, *(null or null_terms(y, run_lengths, n_lags, noise_sums,
                                                      lag_traces)))
    return EncodingResult(r, r2, alpha=np.median(alphas[chosen], axis=0).astype(np.float32),
                          predictions=pred, z=z)


def _lag_terms(pred_run: torch.Tensor, n_lags: int, spp=None) -> torch.Tensor:
    """(nb, K + 1) float64 :func:`prediction_lag_terms` of one run's predictions (n_run, nb):
    on the CPU the compiled :func:`~bids_vlm.encoding.kernels.lag_terms_cpu`, elsewhere
    :func:`lag_terms_torch`."""
    if pred_run.device.type == "cpu":
        return lag_terms_cpu(pred_run, n_lags)
    return lag_terms_torch(pred_run, n_lags, spp)


def lag_terms_torch(pred_run: torch.Tensor, n_lags: int, spp=None) -> torch.Tensor:
    """:func:`_lag_terms` by torch operations (a GPU's); spp: (nb,) the predictions' centred
    sums of squares when known (:func:`run_sums`)."""
    n = len(pred_run)
    sd = (pred_run.double().std(0, correction=0) if spp is None else
          torch.sqrt(torch.as_tensor(spp, device=pred_run.device) / n))
    varying = sd > 1e-12  # the same test as heldout_scores' z-scoring
    scale = torch.where(varying, 1.0 / torch.where(varying, sd, 1.0), 0.0).float()
    rows = (pred_run * scale).T  # unit SD: tiny predictions keep their rho
    rho = row_autocorrelations(rows, [n], n_lags, chunk=4096).double()
    return torch.cat([rho * varying[:, None], varying[:, None].double()], 1)


def prediction_lag_terms(pred_run, n_lags: int, chunk: int = 16384) -> np.ndarray:
    """(V, K + 1) [rho(1..K), 1] of one held-out run's predictions (n_run, V): their
    autocorrelations within the run, and 1; both 0 where the prediction is constant (it is
    then all zeros once z-scored, as :func:`heldout_scores` does). The run's terms weighted by
    n_run / T and summed over runs give the prediction's side of the null variance. Voxels in
    chunks."""
    pred_run = torch.as_tensor(np.asarray(pred_run))
    out = np.zeros((pred_run.shape[1], n_lags + 1))
    for s in range(0, pred_run.shape[1], chunk):
        out[s:s + chunk] = _lag_terms(pred_run[:, s:s + chunk], n_lags).numpy()
    return out


def heldout_z(r, terms, factors, n_dof, cross_fold: float = CROSS_FOLD) -> np.ndarray:
    """(V,) z = atanh(r) sqrt(1 / Var(r) - 3) of held-out r under the null (module docstring).

    terms (V, K + 1): sum over held-out runs of n_run / T :func:`prediction_lag_terms`;
    factors (V, K + 1): :func:`bids_vlm.stats.autocorr.noise_factors` of the voxels' noise
    lag sums and the cleaning's lag traces; Var(r) = cross_fold x row-wise terms . factors,
    bounded to [1 / n_dof, 1 / 4] as in the association (n_dof: frames left by the cleaning,
    m_0). cross_fold: :data:`CROSS_FOLD` for leave-one-run-out predictions; 1 for predictions
    fixed in advance (independent of every run's noise)."""
    # row-wise dot products by einsum: no (V, K + 1) temporary
    var = cross_fold * np.einsum("ij,ij->i", np.asarray(terms, np.float64),
                                 np.asarray(factors, np.float64))
    var = np.clip(var, 1.0 / max(float(n_dof), 4.0), 0.25)
    rc = np.clip(np.asarray(r, np.float64), -1 + 1e-7, 1 - 1e-7)
    return (np.arctanh(rc) * np.sqrt(1.0 / var - 3.0)).astype(np.float32)


def null_terms(y, run_lengths, n_lags, noise_sums=None, lag_traces=None) -> tuple:
    """(factors (V, K + 1), n_dof) of the held-out z's null variance (:func:`heldout_z`) of
    the voxels y (T, V), the same for every layer; defaults as in the association: the voxels'
    own lag sums within runs and each run's mean removal."""
    if noise_sums is None:
        noise_sums = _lag_sums(y.cpu().numpy() if isinstance(y, torch.Tensor) else y,
                               list(run_lengths), n_lags)
    if lag_traces is None:
        lag_traces = demean_traces(run_lengths, n_lags)
    if np.asarray(noise_sums).shape[1] != y.shape[1]:
        raise ValueError(f"noise lag sums are for {np.asarray(noise_sums).shape[1]} voxels, "
                         f"not {y.shape[1]}")
    return (noise_factors(noise_sums, lag_traces, n_lags).numpy().astype(np.float64),
            float(np.asarray(lag_traces)[0]))  # float64 once, not once per layer


def run_sums(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(4, nb) float64 sums over one run's frames of predictions and voxels (n, nb): the
    centred voxels' and predictions' sums of squares and cross-products, and the squared
    errors: [S_yy, S_pp, S_yp, S_ee] (float32 products of centred values: a batch that stays
    in cache; on the CPU one compiled loop in float64, elsewhere :func:`run_sums_torch`)."""
    if pred.device.type == "cpu":
        return run_sums_cpu(pred, y)
    return run_sums_torch(pred, y)


def run_sums_torch(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`run_sums` by torch operations (a GPU's)."""
    p, v = pred.float(), y.float()
    pc = p - p.mean(0, dtype=torch.float64).float()  # exact for a constant series
    vc = v - v.mean(0, dtype=torch.float64).float()
    return torch.stack([vc.square().sum(0), pc.square().sum(0), (vc * pc).sum(0),
                        (v - p).square_().sum(0)]).double()


def scores_from_sums(sums: np.ndarray, runs):
    """(V,) r and R^2 from each run's :func:`run_sums` (n_runs, 4, V): r = sum over runs of
    n_run / T times the run's correlation (0 where either side is constant), as z-scoring
    each run and averaging the products over all frames gives."""
    n = np.array([len(r) for r in runs], np.float64)[:, None]
    syy, spp, syp, see = (sums[:, i] for i in range(4))
    ok = (np.sqrt(syy / n) > 1e-12) & (np.sqrt(spp / n) > 1e-12)
    corr = np.divide(syp, np.sqrt(syy * spp), out=np.zeros_like(syp), where=ok)
    r = (corr * n).sum(0) / n.sum()
    ss_tot = syy.sum(0)
    r2 = 1.0 - see.sum(0) / np.where(ss_tot > 0, ss_tot, np.inf)
    return r.astype(np.float32), r2.astype(np.float32)


def heldout_scores(pred, y, runs, chunk: int = 2048):
    """(V,) Pearson r and R^2 of predictions over all held-out frames, each run z-scored.

    pred, y: (T, V) NumPy arrays or tensors; voxels in chunks."""
    pred, y = (torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
               for a in (pred, y))
    sums = np.empty((len(runs), 4, y.shape[1]))
    for k, run in enumerate(runs):
        idx = torch.as_tensor(run, device=y.device)
        for s in range(0, y.shape[1], chunk):
            sums[k, :, s:s + chunk] = run_sums(pred[idx.to(pred.device), s:s + chunk],
                                                y[idx, s:s + chunk]).cpu().numpy()
    return scores_from_sums(sums, runs)


def best_layer_p(scores: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(V,) selection-adjusted p of each voxel's best layer (highest held-out r):
    min(1, n_layers x its one-sided p Phi(-z)). The best layer is picked after looking at the
    r of all layers, so its own p is optimistic; n_layers x p_best >= n_layers x min p is a
    Bonferroni p of "no layer predicts the voxel", valid whatever the dependence between
    layers (conservative when layers are alike). NaN z -> 1."""
    scores, z = np.asarray(scores), np.asarray(z, np.float64)
    if scores.shape != z.shape:
        raise ValueError(f"scores {scores.shape} and z {z.shape} differ")
    zb = z[scores.argmax(0), np.arange(scores.shape[1])]
    p = special.ndtr(-np.where(np.isnan(zb), -np.inf, zb))
    return np.minimum(1.0, p * scores.shape[0])


def bh_reject(p, q: float) -> np.ndarray:
    """(n,) bool: Benjamini-Hochberg step-up discoveries among p (n,) at level q."""
    p = np.asarray(p, np.float64)
    if not p.size:
        return np.zeros(0, bool)
    ranked = np.sort(p)
    passed = np.flatnonzero(ranked <= q * np.arange(1, p.size + 1) / p.size)
    return p <= ranked[passed.max()] if passed.size else np.zeros(p.shape, bool)


def preferred_layer(scores: np.ndarray, layers, z: np.ndarray | None = None,
                    q: float = 0.05) -> np.ndarray:
    """(V,) layer with the highest held-out r per voxel, where it is significant; else -1.

    scores: (n_layers, V) held-out r; layers: their indices; z: (n_layers, V) their z
    (:func:`heldout_z`): the best layer is kept where its :func:`best_layer_p` passes
    Benjamini-Hochberg across the V voxels at q. Without z (unscored results), where the best
    r > 0.
    """
    scores = np.asarray(scores)
    best = np.asarray(layers)[scores.argmax(0)]
    keep = scores.max(0) > 0
    if z is not None:
        keep &= bh_reject(best_layer_p(scores, z), q)
    return np.where(keep, best, -1)
