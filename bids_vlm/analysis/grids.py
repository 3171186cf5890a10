"""The geometry of the volume's spatial null: the in-mask voxels of the BOLD grid and the random
rigid moves of an atlas over them (:mod:`bids_vlm.analysis.networks`; on grayordinates,
:mod:`bids_vlm.analysis.spin` uses them for the subcortical voxels)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

SHIFT = 0.25  # translations uniform in a ball of this many RMS radii (mm) of the mask


class VoxelGrid(NamedTuple):
    """The in-mask voxels of the BOLD grid: ijk (V, 3) in the masking order, affine, shape.

    The geometry of the spatial null (as :class:`bids_vlm.analysis.spin.SurfaceGrid` on
    grayordinates): ``points``, ``part`` (one part), :meth:`lookup`, :meth:`lattice`,
    :meth:`moves`."""

    ijk: np.ndarray
    affine: np.ndarray
    shape: tuple

    n_parts = 1

    @property
    def points(self) -> np.ndarray:
        return np.asarray(self.ijk, np.float64)

    @property
    def part(self) -> np.ndarray:
        return np.zeros(len(self.ijk), np.int64)

    def lookup(self, codes: np.ndarray, dtype) -> np.ndarray:
        """The grid volume of the voxels' ``codes`` (0 outside the mask)."""
        volume = np.zeros(self.shape, dtype)
        volume[tuple(np.asarray(self.ijk, np.int64).T)] = codes
        return volume

    def lattice(self, limit: int) -> np.ndarray:
        """(V,) bool: every s-th voxel along each axis, s the smallest with at most about
        ``limit`` voxels."""
        step = 1
        while len(self.ijk) / step ** 3 > limit:
            step += 1
        return (np.asarray(self.ijk) % step == 0).all(1)

    def moves(self, n: int, rng) -> np.ndarray:
        """(n, 1, 3, 4): :func:`rigid_transforms`."""
        return rigid_transforms(n, self, rng)[:, None]


def random_rotations(n: int, rng) -> np.ndarray:
    """(n, 3, 3) rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    quat = rng.standard_normal((n, 4))
    w, x, y, z = (quat / np.linalg.norm(quat, axis=1, keepdims=True)).T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
                    axis=1).reshape(n, 3, 3)


def rigid_transforms(n: int, grid: VoxelGrid, rng) -> np.ndarray:
    """(n, 3, 4): for each random rigid move of the atlas, the map from a voxel's ijk to the
    ijk of the atlas point that lands there (the inverse move), in the grid's index space.

    Move: y -> R (y - c) + c + d in mm, R uniform on SO(3) (normalised Gaussian quaternions), c
    the mask's centre of mass, d uniform in a ball of radius SHIFT x the mask's RMS radius."""
    affine = np.asarray(grid.affine, float)
    lin, off = affine[:3, :3], affine[:3, 3]
    xyz = np.asarray(grid.ijk, float) @ lin.T + off
    centre = xyz.mean(0) if len(xyz) else np.zeros(3)
    radius = SHIFT * np.sqrt(((xyz - centre) ** 2).sum(1).mean()) if len(xyz) else 0.0
    rot = random_rotations(n, rng)
    direction = rng.standard_normal((n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    shift = direction * (radius * rng.random(n) ** (1 / 3))[:, None]
    inv, back = np.linalg.inv(lin), rot.transpose(0, 2, 1)  # back: the inverse rotation
    mats = np.empty((n, 3, 4))
    mats[:, :, :3] = inv @ back @ lin
    # source mm = back (x - c - d) + c with x = lin ijk + off; source ijk = inv (mm - off)
    mats[:, :, 3] = (np.einsum("nij,nj->ni", back, off - centre - shift) + centre - off) @ inv.T
    return mats
