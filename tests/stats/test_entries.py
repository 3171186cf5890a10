"""The association's entries placed block by block (:mod:`bids_vlm.stats.entries`): in block
order whatever order the workers finish in, growing past a first estimate, reusing buffers
from one association to the next, and the selective procedure's drops made in place equal to
:func:`bids_vlm.stats.fdr.simes_and_selective` (p from z, as the association computes it)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from scipy import special

from bids_vlm.stats.entries import EntryBuffers, EntryStore
from bids_vlm.stats.fdr import simes_and_selective, simes_rows
from bids_vlm.stats.pvalues import p_values
from bids_vlm.threads import thread_map

N_VOX = 500


def _blocks(rng, sizes, per_an=(0, 60)):
    """Blocks of ANs: (first AN, (rows, cols, r, z)) with entries by AN, then voxel."""
    blocks, first = [], 0
    for size in sizes:
        rows, cols = [], []
        for i in range(size):
            n = int(rng.integers(*per_an))
            rows.append(np.full(n, i, np.int32))
            cols.append(np.sort(rng.choice(N_VOX, n, replace=False)).astype(np.int32))
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        z = (rng.choice([-1, 1], len(rows)) * rng.uniform(2.5, 6, len(rows))).astype(np.float32)
        blocks.append((first, (rows, cols, (z / 10).astype(np.float32), z)))
        first += size
    return blocks, first


def _concatenated(blocks):
    an = np.concatenate([entries[0] + first for first, entries in blocks])
    fields = [np.concatenate([b[k] for _, b in blocks]) for k in range(1, 4)]
    return [an.astype(np.int64), *fields, p_values(fields[2])]


def _set_z(blocks, z):
    """The blocks' z (in place) from z (E,) over all blocks in order."""
    at = 0
    for _, entries in blocks:
        entries[3][:] = z[at:at + len(entries[3])]
        at += len(entries[3])


def test_blocks_finishing_in_any_order_are_placed_in_block_order():
    rng = np.random.default_rng(0)
    blocks, _ = _blocks(rng, [5, 9, 3, 7, 4, 8])
    store = EntryStore(N_VOX, len(blocks))
    delays = rng.permutation(len(blocks)) * 0.01  # later blocks often finish first

    def place(ordinal):
        time.sleep(delays[ordinal])
        store.place(ordinal, *blocks[ordinal])

    with thread_map(3, "test") as imap:
        list(imap(place, range(len(blocks))))
    fields, _ = store.finish(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 0.05, False)
    want = _concatenated(blocks)
    for name, value in zip(("an_index", "voxel_index", "r", "z"), want):
        np.testing.assert_array_equal(fields[name], value)
    np.testing.assert_array_equal(fields["bn_count"], np.bincount(want[1], minlength=N_VOX))


def test_arrays_grow_past_the_first_blocks_estimate():
    rng = np.random.default_rng(1)
    small, _ = _blocks(rng, [4], per_an=(0, 3))
    large, _ = _blocks(rng, [4, 4], per_an=(100, 200))
    blocks = small + [(first + 4, entries) for first, entries in large]
    store = EntryStore(N_VOX, len(blocks))
    for ordinal, block in enumerate(blocks):
        store.place(ordinal, *block)
    fields, _ = store.finish(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 0.05, False)
    np.testing.assert_array_equal(fields["z"], _concatenated(blocks)[3])
    assert fields["z"].flags.owndata and len(fields["z"]) == store.length


def test_buffers_are_reused_by_the_next_association_and_grow():
    """Entries placed in EntryBuffers: views of them, the same memory for a next association
    that fits (no new arrays), new arrays for one that does not; the values as without."""
    rng = np.random.default_rng(7)
    first, _ = _blocks(rng, [6, 6], per_an=(20, 60))
    smaller, _ = _blocks(rng, [5, 5], per_an=(5, 30))
    larger, _ = _blocks(rng, [8, 8, 8], per_an=(100, 200))
    buffers, seen = EntryBuffers(), []
    for blocks in (first, smaller, larger):
        store = EntryStore(N_VOX, len(blocks), buffers)
        for ordinal, block in enumerate(blocks):
            store.place(ordinal, *block)
        fields, _ = store.finish(np.zeros(0, np.int64), np.zeros(0, np.int64), None, 0.05,
                                 False)
        for name, value in zip(("an_index", "voxel_index", "r", "z"), _concatenated(blocks)):
            np.testing.assert_array_equal(fields[name], value)
        assert all(np.shares_memory(fields[name], array) for name, array in
                   zip(("an_index", "voxel_index", "r", "z"), buffers.arrays))
        seen.append(buffers.arrays[3])
    assert seen[1] is seen[0] and seen[2] is not seen[1]


def test_a_block_before_its_predecessors_is_placed_by_the_last_of_them():
    """Placing never waits: block 1 handed over first is placed by block 0's call, and
    wait_placed (a scanner about to reuse block 1's buffers) returns only then."""
    rng = np.random.default_rng(2)
    blocks, _ = _blocks(rng, [3, 3], per_an=(1, 20))
    store = EntryStore(N_VOX, 2)
    store.place(1, *blocks[1])
    assert store.length == 0
    waiter = threading.Thread(target=store.wait_placed, args=(1,))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()
    store.place(0, *blocks[0])
    waiter.join(5)
    assert not waiter.is_alive() and store.length == sum(len(b[1][0]) for b in blocks)


def test_a_failed_block_releases_those_waiting_for_it():
    rng = np.random.default_rng(2)
    blocks, _ = _blocks(rng, [3, 3])
    store = EntryStore(N_VOX, 2)
    store.place(1, *blocks[1])
    errors = []

    def wait_for_block_one():
        try:
            store.wait_placed(1)
        except RuntimeError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_block_one)
    waiter.start()
    time.sleep(0.05)
    store.fail()
    waiter.join(5)
    assert not waiter.is_alive() and "another block" in str(errors[0])
    with pytest.raises(RuntimeError, match="another block"):
        store.place(0, *blocks[0])


@pytest.mark.parametrize("seed", range(3))
def test_selective_drops_in_place_equal_simes_and_selective(seed):
    """Blocks whose ANs are partly unselected or keep fewer entries at stage 2: the entries
    kept in place (gathered per block, then moved down) are those of the reference."""
    rng = np.random.default_rng(seed)
    blocks, n_an = _blocks(rng, [6, 5, 7, 6], per_an=(0, 40))
    an, vox, r, z, _ = _concatenated(blocks)
    for i in rng.choice(n_an, 6, replace=False):  # ANs whose p make them unselected
        mine = an == i
        z[mine] = (np.sign(z[mine]) * rng.uniform(1.0, 2.2, int(mine.sum()))).astype(np.float32)
    _set_z(blocks, z)
    p = p_values(z)
    counts = np.bincount(an, minlength=n_an)
    p_an = simes_rows(p, counts, N_VOX)
    keep, _, thr = simes_and_selective(an, p, n_an, N_VOX, 0.05)
    assert 0 < keep.sum() < len(keep)
    store = EntryStore(N_VOX, len(blocks))
    for ordinal, block in enumerate(blocks):
        store.place(ordinal, *block)
    n_pos, n_neg = np.bincount(an[r > 0], minlength=n_an), np.bincount(an[r < 0], minlength=n_an)
    with thread_map(2, "test") as imap:
        fields, per_an = store.finish(n_pos, n_neg, p_an, 0.05, True, imap)
    for name, value in zip(("an_index", "voxel_index", "r", "z"), (an, vox, r, z)):
        np.testing.assert_array_equal(fields[name], value[keep])
    np.testing.assert_array_equal(fields["bn_count"], np.bincount(vox[keep], minlength=N_VOX))
    np.testing.assert_array_equal(per_an["n_pos"], np.bincount(an[keep & (r > 0)],
                                                               minlength=n_an))
    np.testing.assert_array_equal(per_an["n_neg"], np.bincount(an[keep & (r < 0)],
                                                               minlength=n_an))
    np.testing.assert_array_equal(per_an["z_threshold"], thr)


def test_every_an_selected_keeps_stage_ones_discoveries():
    """R = N: stage 2 is BH at level q, so every entry stays, even one whose float64 p is a
    hair above its limit (stage 1 compared float32 z); the reference agrees."""
    rng = np.random.default_rng(5)
    blocks, n_an = _blocks(rng, [4, 4], per_an=(5, 30))
    an, vox, r, z, _ = _concatenated(blocks)
    counts = np.bincount(an, minlength=n_an)
    z[:] = rng.uniform(5.5, 6.5, len(z))  # every AN selected
    last = np.cumsum(counts) - 1  # each AN's last entry: p just above BH's limit at q
    for e in last:
        limit = 0.05 * counts[an[e]] / N_VOX
        z[e] = np.float32(-special.ndtri(limit / 2))
        while p_values(z[e:e + 1])[0] <= limit:
            z[e] = np.nextafter(z[e], np.float32(0))
    _set_z(blocks, z)
    p = p_values(z)
    assert np.all(p[last] > 0.05 * counts / N_VOX)
    p_an = simes_rows(p, counts, N_VOX)
    keep, _, _ = simes_and_selective(an, p, n_an, N_VOX, 0.05)
    assert keep.all()
    store = EntryStore(N_VOX, len(blocks))
    for ordinal, block in enumerate(blocks):
        store.place(ordinal, *block)
    n_pos, n_neg = np.bincount(an[r > 0], minlength=n_an), np.bincount(an[r < 0], minlength=n_an)
    fields, per_an = store.finish(n_pos, n_neg, p_an, 0.05, True)
    np.testing.assert_array_equal(fields["z"], z)
    assert "n_pos" not in per_an
