"""Banded ridge across streams: one penalty per band and voxel (``--banded-layers``).

The model is himalaya's ``MultipleKernelRidgeCV`` with its default random search (Nunez-Elizalde
et al. 2019; Dupre la Tour et al. 2022): linear kernels K_b = X_b X_b' of the bands, a kernel
K_g = sum_b g_b K_b for each of ``n_iter`` band weights g (the first 1 / n_bands each, the
others Dirichlet draws of concentration 0.1 or 1 from the seed, as
``himalaya.kernel_ridge.generate_dirichlet_samples`` draws them), and for each voxel the (g,
alpha) of the best mean -SSE / n_test over the inner folds (alpha ties to the larger one, a
weight replacing the best so far only when it scores higher by more than float32's epsilon, as
himalaya's search does). The held-out run is predicted with each voxel's (g, alpha), split by
band: pred_b = g_b K_b[test, train] (K_g[train, train] + alpha I)^-1 y_train.

Solved here (:func:`banded_fold`) on the engine of :mod:`bids_vlm.encoding.ridge_solver`: one
float64 eigendecomposition per (weight, inner fold), float32 products with batches of voxels
in parallel, and a single refit per voxel at the end (himalaya refits every voxel whose best
weight improved, at every weight). ``form="primal"`` fits himalaya's ``GroupRidgeCV`` instead
(the same model on the features; the reference the tests compare with).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from himalaya.kernel_ridge import generate_dirichlet_samples, MultipleKernelRidgeCV
from himalaya.ridge import GroupRidgeCV

from bids_vlm.encoding.folds import inner_splits, run_splits
from bids_vlm.encoding.kernels import subtract_sse
from bids_vlm.encoding.ridge import ALPHAS, himalaya_backend, run_sums, scores_from_sums
from bids_vlm.encoding.ridge_solver import (_pool, _Stack, batch_size, device_of,
                                            voxel_batch)

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # himalaya's margin for a better band weight


@dataclass
class BandedResult:
    """Held-out scores of a banded ridge model. r, r2: (V,) of the joint prediction;
    split_r2: {band: (V,)} the share of r2 each band explains (they add up to r2)."""

    r: np.ndarray
    r2: np.ndarray
    split_r2: dict


def banded_layer_keys(shared, spec) -> list:
    """The layer keys (e.g. ``"03"``) of ``shared`` that ``--banded-layers`` ``spec`` selects:
    ("all",) every one, ("none",) none, "last" the deepest, indices those that exist."""
    shared = sorted(shared, key=int)
    if "all" in spec:
        return shared
    wanted = {int(v) for v in spec if v not in ("last", "none")}
    if "last" in spec and shared:
        wanted.add(int(shared[-1]))
    return [key for key in shared if int(key) in wanted]


def band_weights(n_iter: int, n_bands: int, seed: int) -> np.ndarray:
    """(n_iter, n_bands) float64 band weights g of the random search, rows summing to 1:
    himalaya's draws for ``random_state=seed`` with the first row uniform."""
    with himalaya_backend("numpy"):
        g = np.asarray(generate_dirichlet_samples(n_samples=n_iter, n_kernels=n_bands,
                                                  concentration=[0.1, 1.0],
                                                  random_state=seed), np.float64)
    g[0] = 1.0 / n_bands
    return g


def encode_banded(bands: dict, y, run_lengths, alphas=ALPHAS, backend="numpy", n_iter=20,
                  max_inner_folds=5, n_targets_batch=20000, seed=0,
                  form: str = "auto", chunk: int = 20000) -> BandedResult:
    """Banded ridge from feature bands {name: (T, F_b)} to voxels y (T, V), leave-one-run-out
    (module docstring); the held-out R^2 split among the bands (himalaya's
    ``r2_score_split``).

    form: ``"kernel"`` (or ``"auto"``, the default): :func:`banded_fold` on the bands' linear
    kernels; ``"primal"``: himalaya's ``GroupRidgeCV`` on the features, ``chunk`` voxels at a
    time (the same band weights from the same seed, so the same penalties but at near-ties of
    float32 scores). n_targets_batch: voxels per batch at most.
    """
    if len(run_splits(run_lengths)) < 2:
        raise ValueError("banded encoding needs at least 2 runs (leave-one-run-out)")
    if form not in ("auto", "kernel", "primal"):
        raise ValueError(f"form must be auto, kernel or primal, not '{form}'")
    names, runs = list(bands), run_splits(run_lengths)
    y = np.asarray(y, dtype=np.float32)
    scores = _Scores(len(names), runs, y.shape[1])
    if form == "primal":
        for s in range(0, y.shape[1], chunk):
            split = _primal_split(bands, y[:, s:s + chunk], runs, alphas, backend, n_iter,
                                  max_inner_folds, n_targets_batch, seed)
            for k, test in enumerate(runs):
                scores.add(k, s, split[:, test], y[test, s:s + chunk])
    else:
        device = device_of(backend)
        kernels = torch.stack([_linear_kernel(bands[n], device) for n in names])
        g = band_weights(n_iter, len(names), seed)
        for k, test in enumerate(runs):
            for start, pred in banded_fold(kernels, y, runs, k, g, alphas, max_inner_folds,
                                           device, n_targets_batch):
                scores.add(k, start, pred, y[test, start:start + pred.shape[2]])
    return scores.result(names)


def _linear_kernel(x, device) -> torch.Tensor:
    """(T, T) float64 X X' of features x (T, F)."""
    x = torch.as_tensor(np.asarray(x), device=device).double()
    return x @ x.T


def banded_fold(kernels, y, runs, k: int, g, alphas, max_inner_folds: int, device,
                batch: int = 20000):
    """Outer fold k of the banded ridge: yields (start, pred (n_bands, n_k, nb)) for batches
    of voxels start:start + nb of y (T, V), the held-out run's prediction split by band.

    kernels (n_bands, T, T) float64 on the device; g (n_iter, n_bands) band weights; alphas
    (n_alpha,). For each weight the inner folds' decompositions are made once (in parallel)
    and every batch of voxels scored against them (in parallel); each voxel keeps the best
    (weight, alpha), then is refitted once on the whole training set."""
    train_runs = [r for i, r in enumerate(runs) if i != k]
    train, test = np.concatenate(train_runs), runs[k]
    splits = inner_splits(train_runs, max_inner_folds)
    alphas_t = torch.as_tensor(np.asarray(alphas, np.float64), device=device)
    tiebreak = 1e-10 * torch.log(alphas_t)[:, None]
    n_vox = y.shape[1]
    nb = batch_size(runs, [k], len(alphas), max_inner_folds, batch, device)
    starts = range(0, n_vox, nb)
    best_score = torch.full((n_vox,), -np.inf, dtype=torch.float64, device=device)
    best_g = torch.zeros(n_vox, dtype=torch.long, device=device)
    best_a = torch.zeros(n_vox, dtype=torch.long, device=device)
    tr_idx = torch.as_tensor(train, device=device)
    with _pool(device) as imap:
        for i, weights in enumerate(g):
            k_in = _weighted(kernels, weights)[tr_idx][:, tr_idx]

            def make(split, k_in=k_in):
                inner_tr, inner_te = (torch.as_tensor(s, device=device) for s in split)
                lam, u = torch.linalg.eigh(k_in[inner_tr][:, inner_tr])
                a = k_in[inner_te][:, inner_tr] @ u
                return inner_tr, inner_te, _Stack(a, lam.clamp(min=0.0), u.T, alphas_t)

            stacks = list(imap(make, splits))

            def score(start, stacks=stacks, i=i):
                y_tr = voxel_batch(y, start, start + nb, device)[tr_idx]
                total = torch.zeros(len(alphas_t), y_tr.shape[1], dtype=torch.float64,
                                    device=device)
                for inner_tr, inner_te, stack in stacks:
                    subtract_sse(total, stack(y_tr[inner_tr]), y_tr[inner_te])
                mean = total / len(stacks) + tiebreak
                value, arg = mean.max(0)
                sl = slice(start, start + y_tr.shape[1])
                better = value > best_score[sl] + FLOAT32_EPS
                best_score[sl] = torch.where(better, value, best_score[sl])
                best_g[sl] = torch.where(better, i, best_g[sl])
                best_a[sl] = torch.where(better, arg, best_a[sl])

            list(imap(score, starts))
        yield from _refit(kernels, y, g, alphas_t, train, test, best_g, best_a, starts, nb,
                          device, imap)


def _weighted(kernels, weights) -> torch.Tensor:
    """sum_b weights_b kernels_b, (T, T) float64."""
    w = torch.as_tensor(weights, dtype=kernels.dtype, device=kernels.device)
    return (w[:, None, None] * kernels).sum(0)


def _refit(kernels, y, g, alphas, train, test, best_g, best_a, starts, nb, device, imap):
    """(start, split prediction (n_bands, n_test, nb)) of each batch: for each band weight that
    some voxel chose, one eigendecomposition of K_g[train, train] and, per voxel, the dual
    coefficients U diag(1 / (lam + alpha)) U' y_train, then g_b K_b[test, train] @ them."""
    tr, te = (torch.as_tensor(i, device=device) for i in (train, test))
    cross = kernels[:, te][:, :, tr]  # (n_bands, n_te, n_tr)
    refits = {}
    for i in torch.unique(best_g).tolist():
        lam, u = torch.linalg.eigh(_weighted(kernels, g[i])[tr][:, tr])
        d = 1.0 / (lam.clamp(min=0.0)[:, None] + alphas[None, :])  # (n_tr, n_alpha)
        w = torch.as_tensor(g[i], dtype=cross.dtype, device=device)[:, None, None]
        refits[i] = (u.float(), d.float(), (w * cross).float())

    def job(start):
        y_tr = voxel_batch(y, start, start + nb, device)[tr]
        sl = slice(start, start + y_tr.shape[1])
        out = torch.empty(cross.shape[0], len(te), y_tr.shape[1], device=device)
        for i, (u, d, wc) in refits.items():
            cols = torch.nonzero(best_g[sl] == i).flatten()
            if len(cols):
                dual = u @ ((u.T @ y_tr[:, cols]) * d[:, best_a[sl][cols]])
                out[:, :, cols] = wc @ dual
        return start, out

    yield from imap(job, starts)


def _primal_split(bands, y, runs, alphas, backend, n_iter, max_inner_folds, n_targets_batch,
                  seed) -> np.ndarray:
    """(n_bands, T, v) held-out predictions split by band, by himalaya's GroupRidgeCV."""
    names = list(bands)
    split = np.zeros((len(names), *y.shape), dtype=np.float32)
    params = {"n_iter": n_iter, "alphas": np.asarray(alphas),
              "n_targets_batch": n_targets_batch, "progress_bar": False}
    with himalaya_backend(backend) as bk:
        for k, test in enumerate(runs):
            train_runs = [r for i, r in enumerate(runs) if i != k]
            train = np.concatenate(train_runs)
            model = GroupRidgeCV(groups="input", cv=inner_splits(train_runs, max_inner_folds),
                                 random_state=seed, solver_params=params)
            model.fit([bk.asarray(bands[n][train], dtype="float32") for n in names],
                      bk.asarray(y[train], dtype="float32"))
            pred = model.predict([bk.asarray(bands[n][test], dtype="float32") for n in names],
                                 split=True)
            split[:, test] = bk.to_numpy(pred)
    return split


class _Scores:
    """Held-out scores accumulated fold by fold (each fold's test frames are one run), so that
    no (n_bands, T, V) prediction is kept: per run the sums of :func:`heldout_scores` (r and
    R^2 of the summed prediction), and himalaya's ``r2_score_split`` of the run-centred series
    (R^2 split among the bands: sum_t (2 y p_b - p_b sum_b' p_b') / sum_t y^2), summed."""

    def __init__(self, n_bands: int, runs, n_vox: int):
        self.runs = runs
        self.sums = np.zeros((len(runs), 4, n_vox))
        self.inter, self.asst = np.zeros((n_bands, n_vox)), np.zeros((n_bands, n_vox))
        self.sst = np.zeros(n_vox)

    def add(self, k: int, start: int, pred, y_test) -> None:
        """Fold k's held-out split prediction pred (n_bands, n_k, nb) and voxels y_test
        (n_k, nb) of the voxels start:start + nb."""
        p = torch.as_tensor(pred).float().cpu()
        v = torch.as_tensor(np.asarray(y_test)).float()
        cols = slice(start, start + v.shape[1])
        self.sums[k, :, cols] = run_sums(p.sum(0), v).numpy()
        vc = v - v.mean(0)
        pc = p - p.mean(1, keepdim=True)
        self.sst[cols] += vc.square().sum(0).double().numpy()
        self.inter[:, cols] += (pc * vc[None]).sum(1).double().numpy()
        self.asst[:, cols] += (pc * pc.sum(0)[None]).sum(1).double().numpy()

    def result(self, names) -> BandedResult:
        r, r2 = scores_from_sums(self.sums, self.runs)
        with np.errstate(divide="ignore", invalid="ignore"):  # constant voxels: NaN, as himalaya
            split = (2.0 * self.inter - self.asst) / self.sst
        return BandedResult(r=r, r2=r2, split_r2={n: split[i].astype(np.float32)
                                                  for i, n in enumerate(names)})


def reference_split(bands: dict, y, run_lengths, alphas=ALPHAS, n_iter=20, max_inner_folds=5,
                    seed=0, backend="numpy") -> np.ndarray:
    """(n_bands, T, V) held-out split predictions of himalaya's MultipleKernelRidgeCV per fold
    (precomputed float32 linear kernels, the same inner splits, alphas, band-weight draws and
    seed): the fit :func:`encode_banded` reproduces (tests, ``benchmarks/bench_banded.py``)."""
    runs = run_splits(run_lengths)
    out = np.zeros((len(bands), *np.shape(y)), np.float32)
    with himalaya_backend(backend) as bk:
        xs = [bk.asarray(b, dtype="float32") for b in bands.values()]
        for k, test in enumerate(runs):
            train_runs = [r for i, r in enumerate(runs) if i != k]
            train = np.concatenate(train_runs)
            model = MultipleKernelRidgeCV(
                kernels="precomputed", cv=inner_splits(train_runs, max_inner_folds),
                random_state=seed, solver_params={"n_iter": n_iter, "alphas": np.asarray(alphas),
                                                  "progress_bar": False})
            model.fit(bk.stack([x[train] @ x[train].T for x in xs]),
                      bk.asarray(np.asarray(y)[train], dtype="float32"))
            out[:, test] = bk.to_numpy(model.predict(bk.stack([x[test] @ x[train].T
                                                               for x in xs]), split=True))
    return out
