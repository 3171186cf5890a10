"""Paper mode: planted temporal atoms are recovered (up to sign and order), AN sub-groups follow
the planted loadings, and the atom GLM finds the voxels an atom drives."""
from __future__ import annotations

import numpy as np
import pytest

from bids_vlm.encoding.atoms import atom_glm, learn_atoms, match_atoms


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    n, n_an, k = 1200, 300, 4
    atoms = np.repeat(rng.standard_normal((n // 5, k)), 5, axis=0)  # stimulus-like steps
    owner = rng.integers(0, k, n_an)
    loads = np.zeros((n_an, k))
    loads[np.arange(n_an), owner] = rng.uniform(0.5, 2, n_an) * rng.choice([-1, 1], n_an)
    acts = atoms @ loads.T + 0.3 * rng.standard_normal((n, n_an))
    return acts, atoms, owner


def test_planted_atoms_are_recovered(planted):
    acts, atoms, owner = planted
    found, loadings = learn_atoms(acts, n_atoms=8, seed=0)
    assert found.shape == (1200, 8) and loadings.shape == (300, 8)
    assert match_atoms(found, atoms).min() > 0.95  # measured >= 0.998
    # each planted sub-group loads mainly on one found atom, and that atom matches its atom
    corr = np.abs(np.corrcoef(found.T, atoms.T)[:8, 8:])
    for k in range(4):
        main = np.bincount(np.abs(loadings[owner == k]).argmax(1), minlength=8).argmax()
        assert corr[main, k] > 0.95
        assert (np.abs(loadings[owner == k]).argmax(1) == main).mean() > 0.9
    assert (np.abs(loadings) > 1e-8).sum(1).mean() < 4  # sparse loadings


def test_atom_glm_finds_driven_voxels():
    rng = np.random.default_rng(1)
    regs = rng.standard_normal((400, 3))
    y = rng.standard_normal((400, 50))
    y[:, :10] += 0.5 * regs[:, [1]]
    t, q, df = atom_glm(regs, y)
    assert df == 396 and t.shape == (3, 50)
    assert (q[1, :10] < 0.05).all() and (q[1, 10:] > 0.05).mean() > 0.9
    assert (q[0] < 0.05).sum() <= 2 and (t[1, :10] > 0).all()
