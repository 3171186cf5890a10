"""The blocks' results of one association collected: per-AN summaries, and the significant
entries written once, into their final arrays, while the other blocks are still scanned.

Blocks of ANs finish on worker threads in any order. Each block's discoveries (by AN, then
voxel, in its scanner's reused buffers) are copied in the blocks' order into one set of
arrays: by its own worker when the blocks before it are placed, else by the worker that
places the last of them (meanwhile the scanner fills its other set of buffers), made from the
first block's count for all blocks and trimmed in place at the end (``ndarray.resize``,
``realloc``). So the
entries are not kept per block and copied again at the end, and their final arrays are
filled on every worker at once. :meth:`EntryStore.finish` applies the FDR scope across ANs:
the selective procedure's second stage (:mod:`bids_vlm.stats.fdr`) drops entries in place,
only when it drops any (in a dense layer, where every AN is selected, it keeps them all).

An entry's p is not stored: it is :func:`bids_vlm.stats.pvalues.p_values` of its float32 z (the
value every path computed it from), evaluated where it is needed. The arrays can outlive one
association (:class:`EntryBuffers`): the association stage reuses them for every layer, so
that no layer's entries land on freshly mapped memory (on a virtual machine, first touches of
a few hundred MB cost more than the copy itself, and vary 10-fold from run to run).
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch

from bids_vlm.stats import fdr
from bids_vlm.stats.pvalues import _p_value, p_values
from bids_vlm.stats.kernels import _jit_exact

# 16 bytes an entry: indices in int32 (ANs and voxels are far fewer than 2^31); p from z
FIELDS = (("an_index", np.int32), ("voxel_index", np.int32), ("r", np.float32),
          ("z", np.float32))


class EntryBuffers:
    """The entry arrays of :data:`FIELDS`, kept from one association to the next (pass the
    same object to each): an association's entries are views of them, valid until the next
    association given these buffers. They grow as needed and are never shrunk."""

    def __init__(self):
        self.arrays = [np.empty(0, dtype) for _, dtype in FIELDS]


@_jit_exact
def _place(rows, cols, r, z, first_an, out, at, vox_count):  # pragma: no cover - compiled
    an_out, vox_out, r_out, z_out = out
    for e in range(rows.shape[0]):
        an_out[at + e] = rows[e] + first_an
        vox_out[at + e] = cols[e]
        r_out[at + e] = r[e]
        z_out[at + e] = z[e]
    for e in range(rows.shape[0]):
        vox_count[cols[e]] += 1


@_jit_exact
def _compact(an, vox, r, z, limit, first_an, n_pos, n_neg):  # pragma: no cover - compiled
    n = 0
    for e in range(an.shape[0]):  # in place: n <= e, so no entry is overwritten before read
        i = an[e]
        if _p_value(np.float64(abs(z[e]))) <= limit[i]:  # p as p_values gives it
            an[n], vox[n], r[n], z[n] = i, vox[e], r[e], z[e]
            n_pos[i - first_an] += 1 if r[e] > 0 else 0
            n_neg[i - first_an] += 1 if r[e] < 0 else 0
            n += 1
    return n


@_jit_exact
def _count(vox, out):  # pragma: no cover - compiled
    for e in range(vox.shape[0]):
        out[vox[e]] += 1


class EntryStore:
    """The entries (E,) of :data:`FIELDS`, placed block by block in AN order, and bn_count (V,)
    (entries per voxel). n_blocks: how many blocks will be placed (a first estimate of the
    room the arrays need, from the entries of the blocks placed so far). buffers: an
    :class:`EntryBuffers` to place them in (else arrays of their own, trimmed at the end)."""

    def __init__(self, n_vox: int, n_blocks: int, buffers: EntryBuffers | None = None):
        self.buffers = buffers
        self.arrays = list(buffers.arrays) if buffers else [np.empty(0, d) for _, d in FIELDS]
        self.length, self.spans, self.bn_count = 0, [], np.zeros(n_vox, np.int64)
        self._n_blocks, self._placed, self._failed, self._pending = n_blocks, 0, False, {}
        self._turn = threading.Condition()

    def place(self, ordinal: int, first_an: int, entries) -> None:
        """Block ``ordinal``'s entries (rows within the block, voxels, r, z; (E_b,) numpy, by AN
        then voxel; ANs first_an + rows), placed after those of blocks 0 .. ordinal - 1:
        now if they are placed, else by the call that places the last of them (the arrays
        must stay as they are until :meth:`wait_placed` says so). Thread-safe."""
        with self._turn:
            if self._failed:
                raise RuntimeError("another block of the association failed")
            self._pending[ordinal] = (first_an, entries)
            while self._placed in self._pending:
                first, block = self._pending.pop(self._placed)
                n = len(block[0])
                self._reserve(n)
                _place(*block, first, tuple(self.arrays), self.length, self.bn_count)
                self.spans.append((first, self.length, self.length + n))
                self.length += n
                self._placed += 1
            self._turn.notify_all()

    def wait_placed(self, ordinal: int) -> None:
        """Returns once block ``ordinal``'s entries are placed (its arrays may then be reused);
        raises if a block failed meanwhile."""
        with self._turn:
            self._turn.wait_for(lambda: self._placed > ordinal or self._failed)
            if self._failed:
                raise RuntimeError("another block of the association failed")

    def fail(self) -> None:
        """A block failed: those waiting for blocks to be placed raise instead of waiting."""
        with self._turn:
            self._failed = True
            self._turn.notify_all()

    def _reserve(self, n: int) -> None:
        """Room for n more entries: new arrays (their pages are only touched when written)
        for 5/4 of what the blocks so far extrapolate to over all blocks, the entries so far
        copied there (rarely more than once: the first block's estimate is usually enough)."""
        need, room = self.length + n, len(self.arrays[0])
        if need > room:
            size = max(need, room * 3 // 2, need * self._n_blocks * 5 // (4 * self._placed + 4))
            for i, array in enumerate(self.arrays):
                self.arrays[i] = np.empty(size, array.dtype)
                self.arrays[i][:self.length] = array[:self.length]
            if self.buffers is not None:
                self.buffers.arrays = list(self.arrays)

    def finish(self, n_pos, n_neg, p_an, q: float, selective: bool, imap=map) -> tuple:
        """The entries each AN keeps: those of BH per AN (``selective`` false) or of the
        selective procedure (as :func:`bids_vlm.stats.fdr.simes_and_selective`; imap: a map
        over the blocks). n_pos, n_neg (N,): each AN's entries with r > 0 and r < 0; p_an (N,)
        their Simes p. Returns the fields (an_index, voxel_index, r, z (E,), bn_count (V,))
        and the per-AN fields the scope changes (n_pos, n_neg, z_threshold; none for BH per
        AN)."""
        if self._placed != self._n_blocks:
            raise RuntimeError(f"{self._placed} of {self._n_blocks} blocks were placed")
        self._trim()
        counts = n_pos + n_neg
        per_an, n_vox = {}, len(self.bn_count)
        if selective:
            level, selected = fdr.select_ans(p_an, q)
            k_keep = counts if selected.all() else np.zeros_like(counts)
            z, ends = self.arrays[3], [an for an, _, _ in self.spans[1:]] + [len(counts)]

            def stage_two(span_end):
                (first, start, stop), end = span_end
                if selected[first:end].any():
                    k_keep[first:end] = fdr.stage_two_rows(
                        p_values(z[start:stop]), counts[first:end], selected[first:end],
                        level, n_vox)

            if not selected.all():  # else stage 2 is BH at level q: stage 1's discoveries
                list(imap(stage_two, zip(self.spans, ends)))
            per_an["z_threshold"] = fdr.stage_two_thresholds(k_keep, level, n_vox)
            if np.any(k_keep != counts):  # stage 2 drops entries: keep the others, in place
                per_an.update(self._compact(k_keep, counts, level, (n_pos, n_neg), imap))
        fields = {name: array if self.buffers is None else array[:self.length]
                  for (name, _), array in zip(FIELDS, self.arrays)}
        return dict(fields, bn_count=self.bn_count), per_an

    def _compact(self, k_keep, counts, level: float, signs, imap) -> dict:
        """Each AN's k_keep (N,) entries of smallest p (those with p <= its stage-2 limit) of
        its counts (N,), in place: every block's kept entries first gathered at its start
        (blocks at once), then the blocks moved down after one another (``memmove``; the
        arrays at once), and the counts per voxel and, from signs = (n_pos, n_neg) (N,), per
        AN made anew. Returns the new n_pos and n_neg."""
        limit = fdr.keep_limits(k_keep, level, len(self.bn_count))
        n_pos, n_neg = (s.copy() for s in signs)
        firsts = [first for first, _, _ in self.spans] + [len(counts)]

        def gather(j):
            (first, start, stop), end = self.spans[j], firsts[j + 1]
            if np.array_equal(k_keep[first:end], counts[first:end]):
                return stop - start  # this block keeps all its entries
            n_pos[first:end], n_neg[first:end] = 0, 0
            return _compact(*(a[start:stop] for a in self.arrays), limit, first,
                            n_pos[first:end], n_neg[first:end])

        kept = list(imap(gather, range(len(self.spans))))

        def move(array):
            at = 0
            for (_, start, _), n in zip(self.spans, kept):
                if at != start and n:
                    ctypes.memmove(array[at:].ctypes.data, array[start:].ctypes.data,
                                   n * array.itemsize)
                at += n

        list(imap(move, self.arrays))
        self.length = int(sum(kept))
        self._trim()
        self.bn_count = np.zeros(len(self.bn_count), np.int64)
        _count(self.arrays[1][:self.length], self.bn_count)  # no int64 copy, as bincount's
        return dict(n_pos=n_pos, n_neg=n_neg)

    def _trim(self):
        """Arrays of its own cut to the entries (in place: shrinking does not copy or fill);
        :class:`EntryBuffers` stay as they are."""
        if self.buffers is None:
            for array in self.arrays:
                array.resize(self.length, refcheck=False)


class Accumulator:
    """Per-AN summaries and significant entries of the blocks (an :class:`EntryStore`), and
    the FDR scope across ANs applied to them at the end (:meth:`result`)."""

    def __init__(self, n_an: int, n_vox: int, n_blocks: int,
                 buffers: EntryBuffers | None = None):
        self.per_an = {k: np.zeros(n_an, dtype) for k, dtype in
                       (("n_pos", np.int64), ("n_neg", np.int64), ("z_threshold", np.float32),
                        ("peak_r", np.float32), ("peak_voxel", np.int64))}
        self.p_an, self.fields = np.full(n_an, np.nan), {}
        self.store = EntryStore(n_vox, n_blocks, buffers)

    def add(self, ordinal: int, start: int, res) -> None:
        """Block ``ordinal`` (ANs from ``start``): its
        :class:`~bids_vlm.stats.blockscan.BlockResult` (BH per AN), placed before the
        scanner that made it scans again (its entries may be views of the scanner's buffers).
        Thread-safe: the blocks' summaries go to their own ANs, the entries in block order."""
        sl = slice(start, start + res.peak_r.shape[0])
        for name, values in self.per_an.items():
            values[sl] = getattr(res, name).cpu().numpy()
        self.p_an[sl] = res.p_an
        self.store.place(ordinal, start,
                         tuple(t.cpu().numpy() for t in (res.rows, res.cols, res.r, res.z)))

    def set_peaks(self, start, peak_r, peak_voxel):
        self.per_an["peak_r"][start:start + len(peak_r)] = peak_r.cpu().numpy()
        self.per_an["peak_voxel"][start:start + len(peak_r)] = peak_voxel.cpu().numpy()

    def add_all(self, an, vox, sign, r_abs, z_abs, thr):
        """The discoveries of BH across all pairs (E,) and its critical |z|."""
        an, vox, positive = (t.cpu().numpy() for t in (an.long(), vox.long(), sign > 0))
        n_an, order = len(self.p_an), np.lexsort((vox, an))
        self.per_an.update(n_pos=np.bincount(an[positive], minlength=n_an),
                           n_neg=np.bincount(an[~positive], minlength=n_an),
                           z_threshold=np.full(n_an, thr, np.float32))
        z = (sign * z_abs).cpu().numpy()[order].astype(np.float32)
        self.fields = dict(an_index=an[order].astype(np.int32),
                           voxel_index=vox[order].astype(np.int32), z=z,
                           r=(sign * r_abs).cpu().numpy()[order].astype(np.float32))

    def result(self, scanners, n_vox, q, scope="an", imap=map) -> dict:
        """The fields of an :class:`~bids_vlm.stats.association.AssociationResult` (all
        but n_frames) for the FDR ``scope`` ("selective", "an" or "all"): the entries each AN
        keeps (:meth:`EntryStore.finish`; imap: a map over the blocks)."""
        best = torch.stack([s.best_r[:n_vox] for s in scanners])
        top = best.abs().amax(0)  # ties of |r| (across workers): the positive r
        best_r = torch.where((best == top).any(0), top, -top).cpu().numpy()
        fields = dict(self.fields, p_an=self.p_an)
        if scope == "all":
            fields.update(bn_count=np.bincount(fields["voxel_index"], minlength=n_vox),
                          p_an=np.full(len(self.p_an), np.nan))
        else:
            kept, per_an = self.store.finish(self.per_an["n_pos"], self.per_an["n_neg"],
                                             self.p_an, q, scope == "selective", imap)
            fields.update(kept)
            self.per_an.update(per_an)
        return dict(**self.per_an, **fields, best_r=best_r)
