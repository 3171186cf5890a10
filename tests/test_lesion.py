"""Virtual lesion: removing the planted ANs of a network drops its held-out accuracy to chance;
removing as many random ANs does not; step counts, FIR columns and the ranking."""
from __future__ import annotations

import numpy as np
import pytest

from bids_vlm.analysis.lesion import (kept_columns, lesion_curve, network_lesions, rank_by_network,
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


def test_network_lesions_table(planted):
    x, y, member, an, vox = planted
    other = np.arange(80) >= 30
    scores = {("image", 0): np.r_[np.full(30, 0.5), np.zeros(50)],
              ("image", 1): np.r_[np.zeros(30), np.full(50, 0.4)]}
    table = network_lesions({("image", 0): x, ("image", 1): x[:, ::-1]},
                            {("image", 0): (an, vox), ("image", 1): (an, vox)},
                            {("image", 0): 60, ("image", 1): 60}, scores, y, RUNS,
                            {"Net": member, "Other": other, "Empty": np.zeros(80, bool)},
                            (0.0, 0.05), driven={"Net": {"image"}, "Other": {"text"}},
                            backend="torch")
    assert table.network.unique().tolist() == ["Net"]  # Other: driven by no image AN
    assert table.layer.tolist() == [0, 0] and table.n_removed.tolist() == [0, 3]
    assert table.n_voxels.tolist() == [30, 30] and table.n_ans_with_bn.tolist() == [3, 3]
    assert table.mean_r_targeted[0] > 0.6 and abs(table.mean_r_targeted[1]) < 0.06
