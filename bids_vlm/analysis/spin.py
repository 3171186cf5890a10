"""The spatial null of network enrichment on CIFTI grayordinates: a spin test.

As in the volume (:func:`bids_vlm.analysis.networks.spatial_enrichment`), the atlas moves and
the BN maps stay: each surrogate rotates the left hemisphere's fs_LR sphere by a uniformly
random rotation R and the right one by its mirror image F R F (F flips x; Alexander-Bloch et
al. 2018, NeuroImage 178:540), so that both hemispheres turn alike; a vertex takes the network
of the sphere vertex nearest to where the rotation brings it from (none when that is a medial
wall vertex or a vertex the data lack). Subcortical voxels move by the volume's random rigid
moves within their own grid. Network sizes are counted on every s-th grayordinate (s the
smallest with at most LATTICE rows).

Geometry: the two spheres (radius 100 mm, HCP's 32k ``sphere``, shipped in
``data/atlases/fsLR``) and the subcortical voxel grid sit side by side in one lookup volume of
1 mm voxels (sphere shells filled with their nearest vertex's row once), so that each move is a
3 x 4 matrix per part and the labels come from the same compiled kernel as in the volume.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from bids_vlm import cifti
from bids_vlm.analysis.grids import VoxelGrid, random_rotations, rigid_transforms

SHELL = 1.5  # mm either side of the sphere filled in the lookup volume (rounding moves < 0.87)
NOTE = ("spatial null: spin test (the atlas rotated on the fs_LR sphere, uniformly random "
        "rotation on the left hemisphere, its mirror image on the right; vertices take the "
        "network of the nearest sphere vertex, none on the medial wall), subcortical voxels "
        "by random rigid moves of the atlas within their grid")


@functools.lru_cache(maxsize=1)
def _spheres() -> dict:
    z = cifti._fslr_archive()
    return {"CIFTI_STRUCTURE_CORTEX_LEFT": z["sphere_left"].astype(np.float64),
            "CIFTI_STRUCTURE_CORTEX_RIGHT": z["sphere_right"].astype(np.float64)}


def _shell(size: int, centre, radius: float) -> np.ndarray:
    """(n, 3) the voxels of a cube of ``size`` within SHELL (+ half a voxel) of the sphere."""
    j, k = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    parts = []
    for i in range(size):
        dist = np.sqrt((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2)
        keep = np.abs(dist - radius) <= SHELL + 0.5
        parts.append(np.column_stack([np.full(keep.sum(), i), j[keep], k[keep]]))
    return np.concatenate(parts)


@dataclass(frozen=True)
class SurfaceGrid:
    """The grayordinates as points of a lookup volume, for the spin null.

    points (V, 3) float: each row's position in the lookup volume (index units); part (V,)
    int64: 0 left sphere, 1 right sphere, 2 subcortical voxels; rows (shape) int32: the row
    each lookup voxel takes its network from (-1 none); centre (3,): the spheres' centre in
    their region; offsets: x offset of each part's region; voxels: the subcortical
    :class:`~bids_vlm.analysis.grids.VoxelGrid` (None without voxels)."""

    points: np.ndarray
    part: np.ndarray
    rows: np.ndarray
    centre: np.ndarray
    offsets: tuple
    voxels: object

    n_parts = 3

    @classmethod
    def of(cls, bm) -> "SurfaceGrid":
        """The grid of brain models ``bm``; ValueError for a surface other than the 32k fs_LR
        cortex (the spheres shipped)."""
        spheres = _spheres()
        radius = max(np.linalg.norm(s, axis=1).max() for s in spheres.values())
        half = int(np.ceil(radius + SHELL)) + 1
        size = 2 * half + 1
        centre = np.full(3, float(half))
        points = np.zeros((len(bm), 3))
        part = np.full(len(bm), 2, np.int64)
        vol = bm.volume_mask
        sub_shape = tuple(int(n) for n in bm.volume_shape) if vol.any() else (1, 1, 1)
        shape = (2 * size + sub_shape[0], max(size, sub_shape[1]), max(size, sub_shape[2]))
        rows = np.full(shape, -1, np.int32)
        for p, name in enumerate(spheres):
            where = np.flatnonzero(bm.name == name)
            if not len(where):
                continue
            sphere = spheres[name]
            if bm.nvertices[name] != len(sphere):
                raise ValueError(f"{name} has {bm.nvertices[name]} vertices; the spin null "
                                 f"needs the {len(sphere)}-vertex fs_LR sphere")
            offset = np.array([p * size, 0, 0])
            points[where] = sphere[bm.vertex[where]] + centre + offset
            part[where] = p
            row_of_vertex = np.full(len(sphere), -1, np.int32)
            row_of_vertex[bm.vertex[where]] = where
            shell = _shell(size, centre, radius)
            nearest = cKDTree(sphere).query(shell - centre)[1]
            rows[tuple((shell + offset).T)] = row_of_vertex[nearest]
        voxels = None
        if vol.any():
            ijk = bm.voxel[vol].astype(np.int64)
            points[vol] = ijk + np.array([2 * size, 0, 0])
            rows[tuple((ijk + np.array([2 * size, 0, 0])).T)] = np.flatnonzero(vol)
            voxels = VoxelGrid(ijk, np.asarray(bm.affine, float), sub_shape)
        return cls(points, part, rows, centre, (0, size, 2 * size), voxels)

    def lookup(self, codes: np.ndarray, dtype) -> np.ndarray:
        """The lookup volume of the rows' ``codes`` (0 where no row)."""
        out = np.zeros(self.rows.shape, dtype)
        inside = self.rows >= 0
        out[inside] = codes[self.rows[inside]]
        return out

    def lattice(self, limit: int) -> np.ndarray:
        """(V,) bool: every s-th row, s the smallest with at most ``limit`` rows."""
        step = -(-len(self.points) // max(1, limit))
        return np.arange(len(self.points)) % max(step, 1) == 0

    def moves(self, n: int, rng) -> np.ndarray:
        """(n, 3, 3, 4): per move and part, the map from a row's lookup position to its
        source's (the inverse move)."""
        rot = random_rotations(n, rng)
        flip = np.diag([-1.0, 1.0, 1.0])
        out = np.zeros((n, 3, 3, 4))
        for p, r in enumerate((rot, flip @ rot @ flip)):
            back = r.transpose(0, 2, 1)
            c = self.centre + np.array([self.offsets[p], 0, 0])
            out[:, p, :, :3] = back
            out[:, p, :, 3] = c - back @ c
        if self.voxels is not None:
            mats = rigid_transforms(n, self.voxels, rng)
            off = np.array([self.offsets[2], 0.0, 0.0])
            out[:, 2, :, :3] = mats[:, :, :3]
            out[:, 2, :, 3] = mats[:, :, 3] + off - mats[:, :, :3] @ off
        else:
            out[:, 2, :, :3] = np.eye(3)
        return out
