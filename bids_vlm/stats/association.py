"""Every AN regressor against every in-mask voxel: signed Pearson r, calibrated z, BH-FDR per AN.

The AN x voxel matrix is never held whole. ANs are processed in blocks of ``block_size`` and,
within a block, voxels in tiles (:mod:`bids_vlm.stats.blockscan`: one matrix product per
tile, its statistics computed while it is in cache, a 4-byte screening statistic per entry of
the block, exact z and BH only for the entries that can be discoveries); only per-AN summaries,
per-voxel summaries and the significant entries are kept. On the CPU, blocks run in parallel on
one thread each (as many as torch has threads; torch's own threads are set to 1 meanwhile, so
that no matrix product waits for another core); on a CUDA device, one after the other.

Significance (``autocorr``), z = atanh(r) sqrt(T_eff - 3) with T_eff = 1 / Var(r) under the null
(:mod:`bids_vlm.stats.autocorr`):

- ``"exact"`` (default): Var(r) for the cleaned regressor and the voxel's noise autocorrelation
  before cleaning, given the cleaning projection (``noise_sums``, ``lag_traces``).
- ``"bartlett"``: Bartlett's stationary formula on the cleaned series (anti-conservative once
  confounds are projected out; kept for comparison).
- ``"none"``: frames treated as independent (T_eff = T); anti-conservative for BOLD.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from scipy import special

from bids_vlm.stats.autocorr import bartlett_weights, default_lags, row_autocorrelations
from bids_vlm.stats.backends import get_backend
from bids_vlm.stats.blockscan import (CANDIDATE_FRACTION, CHUNK, BlockScanner, Voxels,
                                         pad_voxels, u_threshold)
from bids_vlm.stats.entries import Accumulator, EntryBuffers
from bids_vlm.stats.fdr import bh_sorted, bh_z_thresholds
from bids_vlm.stats.pvalues import p_values
from bids_vlm.stats.inference import method_description  # noqa: F401 (re-exported)
from bids_vlm.stats.inference import noise_model
from bids_vlm.stats.kernels import prepare_rows
from bids_vlm.threads import thread_map
from bids_vlm.progress import progress as progress_bar

AUTOCORR_METHODS = ("exact", "bartlett", "none")
FDR_SCOPES = ("selective", "an", "all")  # two-stage over ANs then voxels; per AN; all pairs
# bytes per AN x voxel element of a tile (r, |r|, factors, scratch, chunks read back), of the
# block (u; per chunk its maximum, AN and first voxel), per candidate entry, per frame x AN of
# the block, and per worker for torch / MKL workspaces and the exact z of 65536 candidates
_TILE_BYTES = 20
_BLOCK_BYTES = 4 + 20 / CHUNK
_CANDIDATE_BYTES = 32
_FRAME_BYTES = 12
_WORKER_BYTES = 64 * 2**20


@dataclass
class AssociationResult:
    """Summaries of one (n_frames x N) regressor block against (n_frames x V) voxels.

    Per AN (N,): n_pos / n_neg (BN+ / BN- counts), peak_r (signed r of largest |r|),
    peak_voxel (its voxel index), z_threshold (BH critical |z|, inf when nothing passes).
    Per voxel (V,): bn_count (ANs with the voxel as BN), best_r (signed r of largest |r| over ANs;
    the positive one when an r and -r tie, whatever the order the blocks ran in).
    Significant entries (E,): an_index, voxel_index (int32), r, z (signed, float32); their p
    (two-sided, uncorrected, float64) is computed from z when asked for (:attr:`p`).
    p_an (N,): Simes p of the AN across voxels (NaN when > q; the selection p of the
    ``selective`` scope).
    """

    n_pos: np.ndarray
    n_neg: np.ndarray
    peak_r: np.ndarray
    peak_voxel: np.ndarray
    z_threshold: np.ndarray
    bn_count: np.ndarray
    best_r: np.ndarray
    an_index: np.ndarray
    voxel_index: np.ndarray
    r: np.ndarray
    z: np.ndarray
    n_frames: int
    p_an: np.ndarray | None = None

    @property
    def p(self) -> np.ndarray:
        """(E,) float64 two-sided p of the entries, :func:`bids_vlm.stats.pvalues.p_values` of z
        (evaluated at each access: keep it when it is needed twice)."""
        return p_values(self.z)


def normalize_columns(x, chunk: int = 65536) -> torch.Tensor:
    """Centre the columns of x (T, n) and scale them to unit norm; constant columns -> 0.

    Returns a new float32 tensor (one copy of x; columns processed in chunks).
    """
    out = torch.as_tensor(np.asarray(x), dtype=torch.float32).clone()
    for start in range(0, out.shape[1], chunk):
        part = out[:, start:start + chunk]
        part -= part.mean(0)
        norm = part.square().sum(0).sqrt()
        part *= torch.where(norm > 1e-6, 1.0 / norm.clamp(min=1e-30), 0.0)
    return out


def memory_bound(n_frames: int, n_an: int, n_vox: int, block_size: int,
                 candidate_fraction: float = CANDIDATE_FRACTION, device="cpu",
                 workers: int | None = None, n_lags: int | None = None) -> int:
    """Upper bound (bytes) of the association's working memory, significant entries aside.

    The float32 inputs, the normalised voxels and their autocorrelations (or noise factors, whose
    float64 temporaries count too), and for each of the ``workers`` (default: those of the
    :class:`~bids_vlm.stats.backends.Backend` of ``device``) a block's screening statistic,
    tile temporaries, normalised regressors and candidates (at most
    ``candidate_fraction`` of the block's entries; more only when BH's bound stalls above it).
    """
    backend = get_backend(device)
    workers = workers or backend.workers()
    n_pad = pad_voxels(n_vox)
    n_lags = n_lags or default_lags([n_frames])
    inputs = 4 * n_frames * (n_an + n_vox) + 4 * (n_frames + n_lags + 1) * n_pad
    inputs += 4 * 8 * (n_lags + 1) * n_vox  # the exact method's noise factors, in float64
    per_an = (n_pad * _BLOCK_BYTES + min(backend.tile, n_pad) * _TILE_BYTES
              + n_frames * _FRAME_BYTES + n_vox * candidate_fraction * _CANDIDATE_BYTES)
    per_worker = 12 * n_pad + _FRAME_BYTES * n_frames * backend.prep_chunk + _WORKER_BYTES
    return int(inputs + workers * (block_size * per_an + per_worker))


def block_size_for_memory(mem_bytes: int, n_frames: int, n_an: int, n_vox: int,
                          device="cpu", workers: int | None = None) -> int:
    """The largest AN block (at least 1) whose :func:`memory_bound` on ``device`` fits in
    ``mem_bytes``."""
    fixed = memory_bound(n_frames, n_an, n_vox, 0, device=device, workers=workers)
    per_an = memory_bound(n_frames, n_an, n_vox, 1, device=device, workers=workers) - fixed
    if mem_bytes - fixed < per_an:
        raise MemoryError(f"--mem {mem_bytes / 2**20:.0f} MiB is too little for {n_frames} "
                          f"frames x ({n_an} ANs + {n_vox} voxels): at least "
                          f"{(fixed + per_an) / 2**20:.0f} MiB needed")
    return int(min(n_an, (mem_bytes - fixed) // per_an))


def associate(regressors, voxels, q=0.05, block_size=256, device="cpu", progress=False,
              desc="association", run_lengths=None, autocorr="exact",
              n_lags=None, workers=None, fdr_scope="selective", n_removed=0, noise_sums=None,
              lag_traces=None, entries: EntryBuffers | None = None) -> AssociationResult:
    """Association of every column of ``regressors`` (T, N) with every column of ``voxels`` (T, V).

    voxels: the (T, V) array, or the same voxels prepared once by :func:`prepare_voxels` (for
    several layers; it must have been given the same run_lengths, autocorr, n_lags, device and
    n_removed). run_lengths: frames per run (sum T); default one run. Both inputs are normalised
    (centred, unit norm over all frames), so r is their inner product. workers: blocks scanned
    at once (default: the device's :class:`~bids_vlm.stats.backends.Backend`); blocks are
    smaller than ``block_size`` when there would be fewer blocks than workers. fdr_scope:
    ``"selective"`` (default), BH per AN at q, then the two-stage selective procedure over the
    layer's ANs
    (:data:`bids_vlm.stats.inference.FDR_TEXT`); ``"an"``,
    BH over voxels for each AN; ``"all"``, one BH over all N x V pairs (two passes over the
    data; z_threshold is then the same for every AN, p_an NaN). n_removed: dimensions the
    cleaning projected out of both inputs (:func:`bids_vlm.design.cleaning.removed_dimensions`,
    summed over runs): the degrees of freedom are
    those of T - n_removed frames (Bartlett: T_eff = (T - n_removed) / (1 + 2 sum rho_x rho_y)).
    noise_sums (>= K + 1, V), lag_traces (>= K + 1,): for ``"exact"``, each voxel's lag sums
    before cleaning and the cleaning projection's lag traces, pooled over runs
    (:func:`bids_vlm.stats.autocorr.noise_factors`); by default the voxels' own lag sums and
    the traces of each run's mean removal (right for voxels that were not cleaned otherwise).
    entries: :class:`~bids_vlm.stats.entries.EntryBuffers` to hold the significant entries
    (reused from one layer to the next; the result's entry arrays are then views of them,
    valid until the next association given them); default arrays of the result's own.
    """
    n_frames, n_an = regressors.shape
    n_dof, run_lengths = _check(regressors.shape[0], voxels, run_lengths, autocorr, fdr_scope,
                                n_removed)
    dev, backend = torch.device(device), get_backend(device)
    workers = workers or backend.workers()
    block = max(1, min(block_size, -(-n_an // workers)))
    n_lags = (n_lags or default_lags(run_lengths)) if autocorr != "none" else None
    spans = _block_spans(n_an, block, workers)
    with _pool(min(workers, max(len(spans), 1))) as imap:
        if isinstance(voxels, Voxels):
            vox = _check_prepared(voxels, run_lengths, n_lags, dev, n_dof, autocorr)
        else:
            noise = noise_model(voxels, autocorr, run_lengths, n_lags, n_removed, noise_sums,
                           lag_traces)
            vox = _prepare_voxels(voxels, run_lengths, n_lags, dev, imap, n_dof, noise)
        zcrit = torch.from_numpy(bh_z_thresholds(vox.n_vox, q).astype(np.float32)).to(dev)
        local, scanners = threading.local(), []
        acc = Accumulator(n_an, vox.n_vox, len(spans), entries)

        def run(method, *args):
            def job(ordinal):
                start, stop = spans[ordinal]
                if not hasattr(local, "scanner"):
                    local.scanner = BlockScanner(vox, block, backend.tile, zcrit,
                                                 fused=backend.compiled)
                    scanners.append(local.scanner)
                    local.slots = [None, None]  # the blocks in the scanner's two buffer sets
                try:
                    xb, acf_b = _prepare_block(regressors[:, start:stop], run_lengths, n_lags,
                                               dev, n_dof, autocorr)
                    if method != "scan":
                        return start, getattr(local.scanner, method)(xb, acf_b, *args)
                    slot = ordinal % 2
                    if local.slots[slot] is not None:  # that set's block must be placed
                        acc.store.wait_placed(local.slots[slot])
                    local.slots[slot] = ordinal
                    acc.add(ordinal, start, local.scanner.scan(xb, acf_b, slot))
                    return start, None
                except BaseException:
                    acc.store.fail()  # the blocks waiting for this one's place raise
                    raise
            return progress_bar(imap(job, range(len(spans))), progress, desc=desc,
                                unit="block", total=len(spans))

        if fdr_scope == "all":
            _across_all(run, acc, q, n_an * vox.n_vox)
        else:
            for _ in run("scan"):
                pass
        return AssociationResult(**acc.result(scanners, vox.n_vox, q, fdr_scope, imap),
                                 n_frames=n_frames)


def _block_spans(n_an: int, block: int, workers: int) -> list:
    """(start, stop) of the blocks of ANs: ``block`` ANs each, but the last 2 x ``workers``
    blocks' worth in blocks of half that, so that the workers finish closer together."""
    bounds = list(range(0, n_an, block))
    if workers > 1 and block > 1:
        tail = max(0, len(bounds) - 2 * workers)  # full blocks before the halved ones
        bounds = bounds[:tail] + list(range(bounds[tail] if tail < len(bounds) else n_an, n_an,
                                            -(-block // 2)))
    return list(zip(bounds, bounds[1:] + [n_an]))


def prepare_voxels(voxels, run_lengths=None, autocorr="exact", n_lags=None, device="cpu",
                   n_removed=0, workers=None, noise_sums=None, lag_traces=None) -> Voxels:
    """The voxels (T, V) normalised (and their autocorrelations computed) once, for the
    association of several regressor sets with them (:func:`associate` takes the result in
    place of the array; the arguments mean the same there and must be the same)."""
    n_frames = voxels.shape[0]
    n_dof, run_lengths = _check(n_frames, voxels, run_lengths, autocorr, "an", n_removed)
    n_lags = (n_lags or default_lags(run_lengths)) if autocorr != "none" else None
    noise = noise_model(voxels, autocorr, run_lengths, n_lags, n_removed, noise_sums, lag_traces)
    dev = torch.device(device)
    with _pool(workers or get_backend(dev).workers()) as imap:
        return _prepare_voxels(voxels, run_lengths, n_lags, dev, imap, n_dof, noise)


def association_z(regressors, voxels, run_lengths=None, autocorr="exact", n_lags=None,
                  n_removed=0, noise_sums=None, lag_traces=None) -> np.ndarray:
    """(N, V) signed z of every AN x voxel pair, dense, with the same null variance as
    :func:`associate` (arguments as there): for small problems (calibration checks, tests)."""
    n_dof, run_lengths = _check(regressors.shape[0], voxels, run_lengths, autocorr, "an",
                                n_removed)
    n_lags = (n_lags or default_lags(run_lengths)) if autocorr != "none" else None
    noise = noise_model(voxels, autocorr, run_lengths, n_lags, n_removed, noise_sums, lag_traces)
    vox = _prepare_voxels(voxels, run_lengths, n_lags, torch.device("cpu"), map, n_dof, noise)
    xb, acf_b = _prepare_block(regressors, run_lengths, n_lags, torch.device("cpu"), n_dof,
                               autocorr)
    r = (xb @ vox.y[:vox.n_vox].T).double().clamp(-1 + 1e-7, 1 - 1e-7)
    if acf_b is None:
        s2 = torch.full_like(r, vox.n_dof - 3.0)
    else:
        var = (acf_b @ vox.acf[:vox.n_vox].T).double().clamp(1.0 / vox.n_dof, 0.25)
        s2 = 1.0 / var - 3.0
    return (torch.atanh(r) * s2.sqrt()).numpy()


def _across_all(run, acc, q, n_tests):
    """BH over all AN x voxel pairs: a first pass bounds the discoveries (counts of
    u >= zcrit[-1]^2), a second collects the entries that can reach the resulting critical
    |z|, with their exact z, for one BH over them."""
    k0 = 0
    for start, (peak_r, peak_voxel, n_screen) in run("count"):
        acc.set_peaks(start, peak_r, peak_voxel)
        k0 += int(n_screen.sum())
    parts = []
    if k0:
        u0 = u_threshold(float(-special.ndtri(q * k0 / n_tests / 2.0)))
        parts = [(rows + start, cols, sign, r_abs, z_abs)
                 for start, (rows, cols, sign, r_abs, z_abs) in run("above", u0)]
    if not parts:
        acc.add_all(*(torch.zeros(0) for _ in range(5)), float("inf"))
        return
    an, vox, sign, r_abs, z_abs = (torch.cat(p) for p in zip(*parts))
    keep, thr = bh_sorted(z_abs, n_tests, q)
    acc.add_all(an[keep], vox[keep], sign[keep], r_abs[keep], z_abs[keep], thr)


def _check(n_frames, voxels, run_lengths, autocorr, fdr_scope, n_removed):
    """Validated arguments -> (degrees of freedom of the frames, run lengths)."""
    n_dof = n_frames - int(n_removed)
    if n_dof < 8:
        raise ValueError(f"{n_frames} frames minus {n_removed} removed dimensions leave too few "
                         "degrees of freedom")
    if fdr_scope not in FDR_SCOPES:
        raise ValueError(f"fdr_scope must be one of {FDR_SCOPES}, not '{fdr_scope}'")
    n_vox_frames = voxels.y.shape[1] if isinstance(voxels, Voxels) else voxels.shape[0]
    if n_vox_frames != n_frames:
        raise ValueError(f"regressors have {n_frames} frames, voxels {n_vox_frames}")
    if autocorr not in AUTOCORR_METHODS:
        raise ValueError(f"autocorr must be one of {AUTOCORR_METHODS}, not '{autocorr}'")
    run_lengths = list(run_lengths) if run_lengths is not None else [n_frames]
    if sum(run_lengths) != n_frames:
        raise ValueError(f"run lengths {run_lengths} do not add up to {n_frames} frames")
    return n_dof, run_lengths


def _check_prepared(vox, run_lengths, n_lags, dev, n_dof, autocorr) -> Voxels:
    """``vox`` if :func:`prepare_voxels` made it with the association's arguments."""
    given = (tuple(run_lengths), n_lags, dev.type, n_dof, autocorr)
    made = (vox.run_lengths, None if vox.acf is None else vox.acf.shape[1] - 1,
            vox.y.device.type, vox.n_dof, vox.autocorr)
    if given != made:
        raise ValueError(f"voxels were prepared for (run lengths, lags, device, degrees of "
                         f"freedom, method) {made}, not {given}")
    return vox


def _pool(workers):
    """:func:`bids_vlm.threads.thread_map` of the association's blocks."""
    return thread_map(workers, "association")


def _prepare_voxels(voxels, run_lengths, n_lags, dev, imap, n_dof=0, noise=None) -> Voxels:
    """Normalised voxel rows (zero rows padding) and their factors of the null variance (their
    autocorrelations for ``bartlett``; ``noise``, the exact method's, when given), in chunks."""
    n_frames, n_vox = voxels.shape
    n_pad = pad_voxels(n_vox)
    y = torch.empty(n_pad, n_frames, device=dev)
    y[n_vox:] = 0.0
    acf = None
    if n_lags is not None:
        acf = torch.zeros(n_pad, n_lags + 1, device=dev)
        acf[:, -1] = 1.0

    step = get_backend(dev).prep_chunk

    def prepare(start):
        stop = min(start + step, n_vox)
        _rows_acf(voxels[:, start:stop], run_lengths, None if noise is not None else n_lags,
                  dev, y[start:stop], None if acf is None or noise is not None else
                  acf[start:stop, :-1])

    list(imap(prepare, range(0, n_vox, step)))
    if noise is not None:
        acf[:n_vox] = noise.to(dev)
    return Voxels(y=y, acf=acf, n_vox=n_vox, n_dof=n_dof or n_frames,
                  run_lengths=tuple(int(n) for n in run_lengths),
                  autocorr="none" if n_lags is None else "exact" if noise is not None else
                  "bartlett")


def _rows_acf(cols, run_lengths, n_lags, dev, rows=None, acf=None):
    """cols (T, n) array -> rows (n, T) float32 on ``dev``, centred, unit norm (constant -> 0),
    and acf (n, K) their autocorrelations at lags 1..K within runs (None when n_lags is None);
    written into ``rows`` / ``acf`` when given. One compiled pass on the CPU
    (:func:`bids_vlm.stats.kernels.prepare_rows`), torch and the FFT on CUDA."""
    n = cols.shape[1]
    rows = torch.empty(n, cols.shape[0], device=dev) if rows is None else rows
    if n_lags is not None and acf is None:
        acf = torch.empty(n, n_lags, device=dev)
    if get_backend(dev).compiled:
        prepare_rows(cols, run_lengths, rows.numpy(), None if n_lags is None else acf.numpy())
    else:
        rows.copy_(_rows(cols, dev=dev))
        if n_lags is not None:
            acf.copy_(row_autocorrelations(rows, run_lengths, n_lags, chunk=n))
    return rows, acf


def _rows(cols, dev=None) -> torch.Tensor:
    """cols (T, n) array -> (n, T) float32 rows on ``dev``, centred, unit norm (constant -> 0)."""
    out = torch.as_tensor(np.asarray(cols)).T.to(device=dev, dtype=torch.float32, copy=True,
                                                  memory_format=torch.contiguous_format)
    out -= out.mean(1, keepdim=True)
    norm = torch.linalg.vector_norm(out, dim=1, keepdim=True)
    out *= torch.where(norm > 1e-6, 1.0 / norm.clamp(min=1e-30), 0.0)
    return out


def _prepare_block(x, run_lengths, n_lags, dev, n_dof=0, autocorr="exact"):
    """x (T, b) raw regressors -> normalised rows (b, T) and their factors of the null variance
    (b, K + 1): for ``exact`` the autocorrelations and a last column 1; for ``bartlett``
    Tukey-weighted autocorrelations / D and a last column 1 / D, D the degrees of freedom of
    the frames (``n_dof``, default T); None for ``none``."""
    rows, acf = _rows_acf(x, run_lengths, n_lags, dev)
    if n_lags is None:
        return rows, None
    if autocorr == "exact":
        return rows, torch.cat([acf, torch.ones(rows.shape[0], 1, device=dev)], 1)
    weighted = acf * bartlett_weights(n_lags).to(dev)
    ones = torch.ones(rows.shape[0], 1, device=dev)
    return rows, torch.cat([weighted, ones], 1) / (n_dof or rows.shape[1])
