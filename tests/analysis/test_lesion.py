"""Virtual lesion: removing the planted ANs of a network drops its held-out accuracy to chance;
removing as many random ANs does not; step counts, FIR columns and the ranking, which each fold
makes from its training runs only."""
from __future__ import annotations

import numpy as np
import pytest

from bids_vlm.analysis.lesion import (FoldAssociation, fold_counts, fold_orders, kept_columns,
                                      lesion_curve, network_lesions, rank_by_network,
                                      removal_counts)

RUNS = [100, 100, 100]


def test_removal_counts():
    assert removal_counts((0.0, 0.01, 0.05, 0.1, 0.25, 0.5), 60) == [
        (0.0, 0), (0.01, 1), (0.05, 3), (0.1, 6), (0.25, 15), (0.5, 30)]
    assert removal_counts((0.0, 0.01, 0.05, 0.5), 8) == [(0.0, 0), (0.01, 1), (0.5, 4)]
    assert removal_counts((0.0, 0.99), 2) == [(0.0, 0)]  # never every AN


def test_kept_columns_drop_every_delayed_copy():
    # 2 delays x 4 ANs, delay-major: columns 0-3 delay 1, 4-7 delay 2
    np.testing.assert_array_equal(kept_columns([1, 3], 4, 8), [0, 2, 4, 6])
    with pytest.raises(ValueError):
        kept_columns([0], 4, 10)


def test_rank_by_network():
    member = np.array([1, 1, 1, 0, 0], bool)
    an = np.array([0, 2, 2, 2, 1, 1, 3])
    vox = np.array([3, 0, 1, 2, 0, 4, 4])
    counts, order = rank_by_network(an, vox, member, 4)
    assert counts.tolist() == [0, 1, 3, 0]
    assert order.tolist() == [2, 1, 0, 3]  # ties by index


@pytest.fixture(scope="module")
def planted():
    """60 independent ANs; the network's 30 voxels carry ANs 5, 17 and 42; 30 other voxels
    carry AN 0; significant entries: the planted ANs in the network, AN 0 outside."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((sum(RUNS), 60)).astype(np.float32)
    y = rng.standard_normal((sum(RUNS), 80)).astype(np.float32)
    y[:, :30] += x[:, [5, 17, 42]] @ rng.uniform(0.5, 1.0, (3, 30))
    y[:, 30:60] += x[:, [0]] * 0.8
    member = np.arange(80) < 30
    an = np.repeat([5, 17, 42, 0], [25, 20, 15, 30])
    vox = np.concatenate([rng.choice(30, 25, replace=False), rng.choice(30, 20, replace=False),
                          rng.choice(30, 15, replace=False), np.arange(30, 60)])
    return x, y, member, an, vox


def test_removing_planted_ans_drops_accuracy_to_chance(planted):
    x, y, member, an, vox = planted
    counts, order = rank_by_network(an, vox, member, 60)
    assert set(order[:3]) == {5, 17, 42}
    curve = lesion_curve(x, y[:, member], RUNS, order, [(0.0, 0), (0.05, 3)], seed=0,
                         backend="torch")
    full, lesioned = curve.mean_r_targeted
    assert full > 0.6 and abs(lesioned) < 0.06  # chance: r ~ 0 on 300 held-out frames (0.02)
    assert curve.mean_r_random[1] > 0.8 * full  # 3 random ANs of 60: the planted ones stay


def test_fold_counts_rank_on_training_runs_only():
    """AN 3 drives the network in run 2 only, AN 7 in every run: the fold that holds run 2
    out never sees AN 3's BNs; the others do, and every fold finds AN 7."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((sum(RUNS), 20)).astype(np.float32)
    y = rng.standard_normal((sum(RUNS), 40)).astype(np.float32)
    y += 0.7 * x[:, [7]]
    y[200:] += 1.2 * x[200:, [3]]
    settings = FoldAssociation(definition="marginal")
    counts = np.array([fold_counts(x, y, RUNS, k, settings) for k in range(3)])
    assert (counts[:, 7] > 30).all()
    assert counts[2, 3] == 0 and (counts[:2, 3] > 10).all()
    assert fold_orders(counts)[2, 0] == 7
    assert counts.sum() - counts[:, [3, 7]].sum() <= 0.05 * counts.sum() + 1  # FDR 0.05


def test_fold_counts_unique_and_exact_noise():
    """Unique BNs (presence removed; no PCs: these ANs are independent, and removing a
    component that mixes AN 4 with others would lend them its voxels) with the exact null
    variance from per-run noise sums and cleaning traces find the planted AN; the
    presence-only voxels give no BN."""
    from bids_vlm.stats.autocorr import lag_sums
    from bids_vlm.stats.autocorr import default_lags, demean_traces

    rng = np.random.default_rng(2)
    x = rng.standard_normal((sum(RUNS), 20)).astype(np.float32)
    presence = np.tile((np.arange(100) % 20 < 10).astype(np.float32), 3)
    x += presence[:, None]
    y = rng.standard_normal((sum(RUNS), 30)).astype(np.float32)
    y[:, :15] += 0.8 * x[:, [4]] - 0.8 * presence[:, None]  # AN 4's own part only
    y[:, 15:] += 2.0 * presence[:, None]  # presence only
    y -= y.mean(0)
    x -= x.mean(0)
    k = default_lags(RUNS)
    starts = np.cumsum([0] + RUNS)
    noise = {"run_noise": [lag_sums(y[a:b], [b - a], k) for a, b in zip(starts, starts[1:])],
             "run_traces": np.tile(demean_traces([100], k), (3, 1)), "run_removed": [1, 1, 1]}
    settings = FoldAssociation(n_pcs=0)
    counts = np.array([fold_counts(x, y, RUNS, f, settings, presence, noise)
                       for f in range(3)])
    assert (counts[:, 4] >= 10).all()
    assert counts.sum() - counts[:, 4].sum() <= 3


def test_network_lesions_table(planted):
    x, y, member, an, vox = planted
    other = np.arange(80) >= 30
    scores = {("image", 0): np.r_[np.full(30, 0.5), np.zeros(50)],
              ("image", 1): np.r_[np.zeros(30), np.full(50, 0.4)]}
    table = network_lesions({("image", 0): x, ("image", 1): x[:, ::-1]},
                            {("image", 0): x, ("image", 1): x[:, ::-1]}, scores, y, RUNS,
                            {"Net": member, "Other": other, "Empty": np.zeros(80, bool)},
                            (0.0, 0.05), driven={"Net": {"image"}, "Other": {"text"}},
                            settings=FoldAssociation(definition="marginal"), backend="torch")
    assert table.network.unique().tolist() == ["Net"]  # Other: driven by no image AN
    assert table.layer.tolist() == [0, 0] and table.n_removed.tolist() == [0, 3]
    assert table.n_voxels.tolist() == [30, 30]
    assert (table.n_ans_with_bn >= 3).all() and (table.n_ans_with_bn < 4).all()  # FDR 0.05
    assert table.mean_r_targeted[0] > 0.6 and abs(table.mean_r_targeted[1]) < 0.06


def test_fold_specific_removal_differs_from_one_ranking():
    """Folds that rank differently remove different ANs: the curve follows each fold's own
    ranking (here fold 0 removes the AN that carries the network, the others do not)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((sum(RUNS), 10)).astype(np.float32)
    y = rng.standard_normal((sum(RUNS), 20)).astype(np.float32) + 1.5 * x[:, [2]]
    good = np.array([np.r_[2, np.delete(np.arange(10), 2)]] * 3)
    mixed = good.copy()
    mixed[1:] = np.r_[0, 1, np.arange(2, 10)]  # folds 1, 2 remove AN 0 first
    steps = [(0.0, 0), (0.1, 1)]
    all_good = lesion_curve(x, y, RUNS, good, steps, backend="torch").mean_r_targeted[1]
    one_good = lesion_curve(x, y, RUNS, mixed, steps, backend="torch").mean_r_targeted[1]
    assert abs(all_good) < 0.06 and one_good > 0.5
