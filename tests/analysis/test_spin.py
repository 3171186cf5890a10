"""The spin null of network enrichment on grayordinates: the geometry (rotations on the fs_LR
spheres, mirrored between hemispheres, subcortex by rigid moves), a planted BN map found, and
calibration on null BN maps that are randomly spun networks of another atlas (the null the
spin test assumes), with a binomial bound."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from bids_vlm import cifti
from bids_vlm.analysis import grids
from bids_vlm.analysis import networks as nw
from bids_vlm.analysis.spin import SurfaceGrid, _spheres
from bids_vlm.analysis.atlases import load_surface_networks, surface_network_masks


@pytest.fixture(scope="module")
def bm():
    return cifti.standard_91k()


@pytest.fixture(scope="module")
def grid(bm):
    return SurfaceGrid.of(bm)


def _labels(grid, mats, codes):
    out = np.empty((len(mats), len(grid.points)), np.uint8)
    counts = np.zeros((len(mats), 256), np.int64)
    nw._labels(grid.points, grid.part, np.ones(len(grid.points), bool),
               np.ascontiguousarray(mats), grid.lookup(codes, np.uint8), out, counts)
    return out


def test_identity_keeps_every_row_and_spins_stay_on_the_sphere(grid, bm):
    codes = (np.arange(len(bm)) % 250 + 1).astype(np.uint8)
    identity = np.zeros((1, 3, 3, 4))
    identity[0, :, :, :3] = np.eye(3)
    assert np.array_equal(_labels(grid, identity, codes)[0], codes)
    moved = _labels(grid, grid.moves(20, np.random.default_rng(0)), np.ones(len(bm), np.uint8))
    cortex = bm.surface_mask
    # a rotated vertex lands on the medial wall about as often as the wall covers the sphere
    kept = moved[:, cortex].mean()
    wall = 1 - cortex.sum() / (2 * 32492)
    assert abs(kept - (1 - wall)) < 0.03, kept
    # subcortical voxels move rigidly within their grid: most stay inside it
    assert 0.2 < moved[:, ~cortex].mean() <= 1.0


def test_right_hemisphere_turns_as_the_mirror_image_of_the_left(grid):
    mats = grid.moves(3, np.random.default_rng(2))
    flip = np.diag([-1.0, 1.0, 1.0])
    assert np.allclose(mats[:, 1, :, :3], flip @ mats[:, 0, :, :3] @ flip)
    for m in mats[:, 0, :, :3]:
        assert np.allclose(m @ m.T, np.eye(3)) and np.isclose(np.linalg.det(m), 1.0)


def _spun(pattern, bm, rng):
    """(G,) bool: ``pattern`` moved by one uniformly random rotation of the spheres (the
    right by its mirror image), nearest vertex; subcortex empty."""
    rot = grids.random_rotations(1, rng)[0]
    flip = np.diag([-1.0, 1.0, 1.0])
    out = np.zeros(len(bm), bool)
    for r, (name, sphere) in zip((rot, flip @ rot @ flip), _spheres().items()):
        rows = np.flatnonzero(bm.name == name)
        values = np.zeros(len(sphere), bool)
        values[bm.vertex[rows]] = pattern[rows]
        src = cKDTree(sphere).query(sphere[bm.vertex[rows]] @ r)[1]  # R^T x: source of x
        out[rows] = values[src]
    return out


@pytest.mark.slow
def test_spin_null_finds_a_planted_map_and_is_calibrated(bm, grid):
    yeo7 = load_surface_networks("yeo7")[:1]
    masks = nw.NetworkMasks(surface_network_masks(yeo7, bm))
    masks.grid = grid
    yeo17 = cifti.shipped_labels("yeo17")
    rng = np.random.default_rng(5)
    n_null = 120
    maps = [np.asarray(masks["Visual"])]  # AN 0: BNs exactly the Visual network
    maps += [_spun(yeo17 == rng.integers(1, 18), bm, rng) for _ in range(n_null)]
    an = np.concatenate([np.full(m.sum(), i) for i, m in enumerate(maps)])
    vox = np.concatenate([np.flatnonzero(m) for m in maps])
    out = nw.enrichment(an, vox, np.ones(len(an)), len(maps), masks, n_surrogates=200,
                        max_surrogates=200, seed=1)
    # no spun atlas puts as many of its BNs in Visual: p at the floor of the moves used
    used = out["Visual"]["n_null"][0]
    assert used > 150 and out["Visual"]["p"][0] == pytest.approx(1 / (used + 1))
    p = np.stack([out[n]["p"][1:] for n in masks], axis=1)
    k = np.stack([out[n]["n_pos"][1:] for n in masks], axis=1)
    tested = p[k > 0]
    # pairs of one AN are dependent: bound with the ANs as the independent draws
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / n_null)
    assert (tested <= 0.05).mean() <= bound, (tested <= 0.05).mean()
    assert len(tested) > 2 * n_null
