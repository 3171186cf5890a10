"""Leave-one-run-out ridge on one decomposition per fold (the engine of
:mod:`bids_vlm.encoding.ridge`).

A ridge fit without intercept on training frames (X_in, Y_in) predicts test frames X_te as

    pred_alpha = X_te (X_in' X_in + alpha I)^-1 X_in' Y_in = A diag(1 / (lam + alpha)) B Y_in

with, in the kernel form (F >= n_in), K_in = X_in X_in' = U diag(lam) U', A = X_te X_in' U,
B = U'; in the primal form (F < n_in), X_in' X_in = W diag(lam) W', A = X_te W, B = (X_in W)'.
Each (outer fold, inner fold) pair is decomposed once, in float64 from its small Gram matrix;
every alpha and voxel then costs only float32 products with the voxels: the float32 matrices
M_alpha = A diag(1 / (lam + alpha)) B (n_te, n_in), stacked over the alphas, multiply a batch
of voxels once per inner fold (or A diag(.) multiplies B Y_in when the rank r < n_in makes
that cheaper).

The alpha of each voxel is chosen as himalaya's ``RidgeCV`` / ``KernelRidgeCV`` choose it with
their default ``score_func`` (``l2_neg_loss``): the inner folds' mean of -SSE / n_test for each
alpha, plus 1e-10 log(alpha) so that ties go to the larger alpha, argmax over alphas. The
held-out run is then predicted by each voxel's alpha (voxels grouped by alpha).
:func:`reference_fold_predict` is the himalaya fit it reproduces (tests, benchmark).

Voxels go in batches small enough on the CPU for each batch's predictions to be scored while
they are in cache, one batch per core (torch single-threaded meanwhile); on a GPU, large
batches one after the other. In the kernel form all blocks come from one x x' per layer.
"""
from __future__ import annotations


import numpy as np
import torch
from himalaya.backend import get_backend
from himalaya.kernel_ridge import KernelRidgeCV
from himalaya.ridge import RidgeCV

from bids_vlm.encoding.folds import inner_splits
from bids_vlm.encoding.kernels import subtract_sse
from bids_vlm.threads import thread_map

# float32 entries of a batch's stacked inner predictions: a few MiB stay in a CPU's cache
_BUDGET = {"cpu": 1 << 20, "cuda": 1 << 26}


def device_of(backend: str) -> torch.device:
    """The torch device of a himalaya backend name ('numpy', 'torch' -> cpu, 'torch_cuda' ->
    cuda)."""
    return torch.device("cuda" if str(backend).endswith("cuda") else "cpu")


def _float64(x, device) -> torch.Tensor:
    """x (NumPy array or tensor) as a float64 tensor on the device."""
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return x.to(device=device, dtype=torch.float64)


def _decompose(x: torch.Tensor, rows_in, rows_te, kernel=None):
    """A (n_te, r), lam (r,), B (r, n_in) of the ridge operator (module docstring) from the
    frames rows_in to the frames rows_te of x (T, F) float64; kernel: x x' (T, T) when
    known (its blocks then serve the kernel form)."""
    x_in = x[rows_in]
    if x.shape[1] >= len(rows_in):  # kernel form
        k_in, k_te = ((kernel[rows_in][:, rows_in], kernel[rows_te][:, rows_in])
                      if kernel is not None else (x_in @ x_in.T, x[rows_te] @ x_in.T))
        lam, u = torch.linalg.eigh(k_in)
        a, b = k_te @ u, u.T
    else:
        lam, w = torch.linalg.eigh(x_in.T @ x_in)
        a, b = x[rows_te] @ w, (x_in @ w).T
    return a, lam.clamp(min=0.0), b


class _Stack:
    """Predictions (n_alpha * n_te, nb) of test frames from training voxels Y_in (n_in, nb)
    for every alpha, by the cheaper of M Y_in and (A D) (B Y_in); only the matrices of the
    cheaper one are kept (at 12 runs of 300 frames, M is 75 MiB for each inner fold)."""

    def __init__(self, a, lam, b, alphas):
        n_alpha, (n_te, r), n_in = len(alphas), a.shape, b.shape[1]
        d = 1.0 / (lam[None, :] + alphas[:, None])  # (n_alpha, r)
        ad = (a[None] * d[:, None, :]).reshape(n_alpha * n_te, r).float()
        self.two_step = r * n_in + n_alpha * n_te * r < n_alpha * n_te * n_in
        if self.two_step:
            self.ad, self.b = ad, b.float().contiguous()
        else:
            self.m = ad @ b.float().contiguous()

    def __call__(self, y_in):
        return self.ad @ (self.b @ y_in) if self.two_step else self.m @ y_in


class _Predictor:
    """Held-out predictions (n_te, nb) from training voxels (n_tr, nb), each voxel with its
    own alpha: (A (D[:, alpha] * (B Y))) when that is cheaper, else M_alpha Y with the voxels
    sorted by alpha."""

    def __init__(self, a, lam, b, alphas):
        (n_te, r), n_tr = a.shape, b.shape[1]
        self.per_voxel = r * (n_tr + n_te) < n_te * n_tr
        d = 1.0 / (lam[:, None] + alphas[None, :])  # (r, n_alpha)
        self.a, self.b, self.d = a.float(), b.float().contiguous(), d.float()
        if not self.per_voxel:
            self.m = [(self.a * self.d[:, i]) @ self.b for i in range(len(alphas))]

    def __call__(self, y_tr, best):
        if self.per_voxel:
            return self.a @ ((self.b @ y_tr) * self.d[:, best])
        order = torch.argsort(best)  # voxels (as rows) sorted by alpha
        y_sorted = y_tr.T[order]
        done = torch.empty(y_tr.shape[1], self.m[0].shape[0], device=y_tr.device)
        start = 0
        for i, count in enumerate(torch.bincount(best, minlength=len(self.m)).tolist()):
            if count:
                torch.mm(y_sorted[start:start + count], self.m[i].T,
                         out=done[start:start + count])
                start += count
        out = torch.empty_like(done)
        out[order] = done
        return out.T


class _InnerCV:
    """Each voxel's alpha by the inner folds ``splits`` ((train, test) positions in a set of
    training frames, with their :class:`_Stack`), as himalaya's RidgeCV chooses it (module
    docstring)."""

    def __init__(self, splits, stacks, alphas):
        self.folds = [(tr, te, stack) for (tr, te), stack in zip(splits, stacks)]
        self.n_alphas = len(alphas)
        self.tiebreak = 1e-10 * torch.log(alphas)[:, None]

    def best(self, y_tr):
        """y_tr (n_train, nb) float32 -> the alpha index of each voxel (nb,)."""
        score = torch.zeros(self.n_alphas, y_tr.shape[1], dtype=torch.float64,
                            device=y_tr.device)
        for tr, te, stack in self.folds:
            subtract_sse(score, stack(y_tr[tr]), y_tr[te])
        return torch.argmax(score / len(self.folds) + self.tiebreak, dim=0)


def _inner_cv(x, train, splits, alphas, kernel, imap, extra=()):
    """(:class:`_InnerCV` of ``splits`` inside the frames ``train``, the results of the
    ``extra`` decompositions): every decomposition on its own, one per thread of ``imap``.
    extra: callables of no argument run beside them (the outer fold's predictor)."""
    def make(job):
        if callable(job):
            return job()
        tr, te = job
        return _Stack(*_decompose(x, train[tr], train[te], kernel), alphas)

    done = list(imap(make, [*splits, *extra]))
    return _InnerCV(splits, done[:len(splits)], alphas), done[len(splits):]


class Fold:
    """Outer fold k of the leave-one-run-out ridge from features x (T, F): its decompositions
    (one per inner fold, unless the alphas are chosen elsewhere, and one for the held-out run),
    ready for batches of voxels.

    runs: :func:`bids_vlm.encoding.folds.run_splits`; alphas (n_alpha,); max_inner_folds as
    :func:`bids_vlm.encoding.folds.inner_splits`; device: where the products run; kernel:
    x x' (T, T) when known; imap: the ``map`` that runs the decompositions; inner: False when
    :meth:`solve` is given each voxel's alpha (:class:`SharedAlphas`)."""

    def __init__(self, x, runs, k: int, alphas, max_inner_folds: int, device, kernel=None,
                 imap=map, inner: bool = True):
        self.device = torch.device(device)
        train_runs = [r for i, r in enumerate(runs) if i != k]
        train, self.test = np.concatenate(train_runs), runs[k]
        self.alphas = torch.as_tensor(np.asarray(alphas, np.float64), device=self.device)
        x = _float64(x, self.device)
        self.train = torch.as_tensor(train, device=self.device)
        test = torch.as_tensor(self.test, device=self.device)
        splits = _device_splits(inner_splits(train_runs, max_inner_folds) if inner else [],
                                self.device)

        def outer():
            return _Predictor(*_decompose(x, self.train, test, kernel), self.alphas)

        self.cv, (self.outer,) = _inner_cv(x, self.train, splits, self.alphas, kernel, imap,
                                           [outer])
        self.cv = self.cv if inner else None

    def solve(self, y_batch, best=None):
        """y_batch (T, nb) float32 on the device -> held-out prediction (n_te, nb) float32 and
        each voxel's alpha index (nb,) (into ``alphas``): ``best`` when given, else chosen by
        the inner folds."""
        y_tr = y_batch[self.train]
        best = self.cv.best(y_tr) if best is None else best
        return self.outer(y_tr, best), best


class SharedAlphas:
    """Each voxel's alpha chosen once for every outer fold (``alpha_cv`` "shared"): the inner
    folds group all the runs (:func:`bids_vlm.encoding.folds.inner_splits` of every run), so a
    layer needs len(groups) decompositions for the choice instead of len(groups) per held-out
    run. The held-out run then took part in choosing its own alpha (among the alphas only: its
    prediction is still fitted without it); the null calibration of the held-out z with this
    choice is in ``tests/encoding/test_ridge.py``."""

    def __init__(self, x, runs, alphas, max_inner_folds: int, device, kernel=None, imap=map):
        device = torch.device(device)
        self.alphas = torch.as_tensor(np.asarray(alphas, np.float64), device=device)
        self.frames = torch.as_tensor(np.concatenate(runs), device=device)
        splits = _device_splits(inner_splits(list(runs), max_inner_folds), device)
        self.cv, _ = _inner_cv(_float64(x, device), self.frames, splits, self.alphas, kernel,
                               imap)

    def choose(self, y_batch):
        """y_batch (T, nb) float32 on the device -> each voxel's alpha index (nb,)."""
        return self.cv.best(y_batch[self.frames])


def _device_splits(splits, device) -> list:
    return [tuple(torch.as_tensor(i, device=device) for i in split) for split in splits]


def batch_size(runs, folds, n_alphas: int, max_inner_folds: int, limit: int, device,
               shared: bool = False) -> int:
    """Voxels per batch: at most ``limit``, and the stacked inner predictions of the largest
    inner test set (n_alphas x its frames x voxels) within the device's budget (a few MiB on
    the CPU, where the batch then stays in cache for the scores that follow each product).
    shared: the inner folds group every run (:class:`SharedAlphas`)."""
    sets = [list(runs)] if shared else [[r for i, r in enumerate(runs) if i != k]
                                        for k in folds]
    rows = max(len(te) for train in sets for _, te in inner_splits(train, max_inner_folds))
    return int(max(256, min(limit, _BUDGET[torch.device(device).type] // (n_alphas * rows))))


def voxel_batch(y, start: int, stop: int, device) -> torch.Tensor:
    """Columns start:stop of y (T, V) (NumPy array or tensor) as a contiguous float32 tensor on
    the device."""
    part = y[:, start:stop]
    if isinstance(part, torch.Tensor):
        return part.to(device=device, dtype=torch.float32).contiguous()
    return torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(device)


ALPHA_CV = ("nested", "shared")


def loro_blocks(x, y, runs, alphas, max_inner_folds: int = 5, device="cpu", folds=None,
                batch: int = 20000, finish=None, alpha_cv: str = "nested"):
    """Held-out predictions of the leave-one-run-out ridge from x (T, F) to y (T, V), block by
    block, for each fold k in ``folds`` (default all runs) and batch of voxels
    start:start + nb: yields ``finish(k, start, pred (n_k, nb), y_test (n_k, nb), alpha index
    (nb,))`` (tensors on the device; default the tuple itself), in order. ``len()`` of the
    returned iterable counts the blocks, its ``steps`` the batches of work (the blocks and,
    with shared alphas, the pass that chooses them), and its ``iterate(tick)`` calls tick()
    after each batch of that pass. alpha_cv: "nested", each outer fold chooses its voxels'
    alphas by inner folds of its training runs; "shared", once for all folds
    (:class:`SharedAlphas`).

    On the CPU the decompositions of a fold, then its batches, run in parallel, one per torch
    thread (torch single-threaded meanwhile, so that no operation waits for another core: a
    multi-threaded eigendecomposition of a small matrix spins for seconds on a busy machine;
    ``finish`` runs there too); on a GPU one after the other."""
    if alpha_cv not in ALPHA_CV:
        raise ValueError(f"alpha_cv must be one of {ALPHA_CV}, not {alpha_cv!r}")
    return _Blocks(x, y, runs, alphas, max_inner_folds, torch.device(device),
                   range(len(runs)) if folds is None else list(folds), batch,
                   finish or (lambda *block: block), alpha_cv == "shared")


class _Blocks:
    def __init__(self, x, y, runs, alphas, max_inner_folds, device, folds, batch, finish,
                 shared):
        self.args = x, runs, alphas, max_inner_folds, device
        self.y, self.folds, self.finish, self.shared = y, folds, finish, shared
        self.nb = batch_size(runs, folds, len(alphas), max_inner_folds, batch, device, shared)

    def __len__(self):
        return len(self.folds) * -(-self.y.shape[1] // self.nb)

    @property
    def steps(self) -> int:
        """Batches of work (for a progress bar): the blocks, plus with shared alphas the pass
        over every batch that chooses them."""
        return len(self) + (-(-self.y.shape[1] // self.nb) if self.shared else 0)

    def __iter__(self):
        return self.iterate()

    def iterate(self, tick=None):
        """The blocks, as iterating gives them; tick: called (in this thread) after each batch
        of the shared alpha choice, e.g. a progress bar's ``update``."""
        x, runs, alphas, max_inner_folds, device = self.args
        x = _float64(x, device)
        # the kernel form's blocks come from one x x' when every fit has more features than
        # frames
        kernel = x @ x.T if x.shape[1] >= len(x) - min(len(r) for r in runs) else None
        starts = range(0, self.y.shape[1], self.nb)
        with _pool(device) as imap:
            chosen = (self._shared_alphas(x, kernel, imap, starts, tick or (lambda: None))
                      if self.shared else None)
            for k in self.folds:
                fold = Fold(x, runs, k, alphas, max_inner_folds, device, kernel, imap,
                            inner=not self.shared)
                test = torch.as_tensor(fold.test, device=device)

                def job(start, k=k, fold=fold, test=test):
                    yb = voxel_batch(self.y, start, start + self.nb, device)
                    pred, best = fold.solve(yb, None if chosen is None else
                                            chosen[start:start + yb.shape[1]])
                    return self.finish(k, start, pred, yb[test], best)
                yield from imap(job, starts)

    def _shared_alphas(self, x, kernel, imap, starts, tick) -> torch.Tensor:
        """(V,) each voxel's alpha index by :class:`SharedAlphas`; tick() after each batch.
        The batches' results are copied into one array as they come: kept as they are, each a
        small tensor made in a worker thread, they pinned the memory of that thread's batch
        around them (glibc's arenas; 1.7 MB a batch at 600 frames, so GBs at the 1-hour
        scale)."""
        _, runs, alphas, max_inner_folds, device = self.args
        shared = SharedAlphas(x, runs, alphas, max_inner_folds, device, kernel, imap)

        def job(start):
            return start, shared.choose(voxel_batch(self.y, start, start + self.nb, device))
        chosen = np.empty(self.y.shape[1], np.int64)
        for start, best in imap(job, starts):
            chosen[start:start + len(best)] = best.cpu().numpy()
            tick()
        return torch.from_numpy(chosen).to(device)


def _pool(device):
    """:func:`bids_vlm.threads.thread_map` with one thread per torch thread on the CPU (plain
    ``map`` on a GPU)."""
    return thread_map(torch.get_num_threads() if device.type == "cpu" else 1, "encoding")


def reference_fold_predict(x, y, runs, k: int, alphas, max_inner_folds=5,
                           n_targets_batch=20000):
    """Fold k fitted by himalaya (``RidgeCV``, or ``KernelRidgeCV`` with a linear kernel when
    F > the training frames) under the active himalaya backend, with the same inner splits:
    the reference :class:`Fold` reproduces. Returns the prediction (n_k, V) and alphas (V,)."""
    bk = get_backend()
    train_runs = [r for i, r in enumerate(runs) if i != k]
    train = np.concatenate(train_runs)
    splits = inner_splits(train_runs, max_inner_folds)
    params = {"n_targets_batch": n_targets_batch, "n_alphas_batch": len(alphas),
              "n_targets_batch_refit": n_targets_batch}
    model = (KernelRidgeCV(alphas=alphas, kernel="linear", cv=splits, solver_params=params)
             if x.shape[1] > len(train) else RidgeCV(alphas=alphas, cv=splits,
                                                       solver_params=params))
    model.fit(bk.asarray(x[train], dtype="float32"), bk.asarray(y[train], dtype="float32"))
    pred = bk.to_numpy(model.predict(bk.asarray(x[runs[k]], dtype="float32")))
    return pred, bk.to_numpy(model.best_alphas_)
