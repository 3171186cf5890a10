"""The network analyses of every layer of a model (bids_vlm/analysis/layers.py): the stored
enrichment reads back per layer, and only an AN the spatial null finds drives a network (which
the lesion then refits; its end-to-end run: tests/derivatives/test_derivatives_networks.py)."""
from __future__ import annotations

import json

import h5py
import numpy as np

from bids_vlm.analysis.grids import VoxelGrid
from bids_vlm.analysis.layers import _driven, network_enrichment, read_enrichment, store_enrichment
from bids_vlm.analysis.networks import NetworkMasks
from bids_vlm.config import AnalysisConfig
from bids_vlm.stats.bnstore import LayerBNs, pack


def test_lesion_drivers_use_the_spatial_null_per_layer(tmp_path):
    """A planted image AN fills 80% of network A (a patch at the surface of a ball 'brain';
    p about 1/1000: a few moves of the atlas put A back where it was); the other ANs have BNs
    at random. Only the planted AN drives a network (BH per layer: stream, layer)."""
    rng = np.random.default_rng(0)
    ijk = np.indices((20, 20, 20)).reshape(3, -1).T
    ijk = ijk[np.linalg.norm(ijk - 9.5, axis=1) <= 9.5]
    a = np.linalg.norm(ijk - [19, 9.5, 9.5], axis=1) <= 4.5
    masks = NetworkMasks({"A": a, "B": np.linalg.norm(ijk - [0, 9.5, 9.5], axis=1) <= 4.5})
    masks.grid = VoxelGrid(ijk, np.diag([3.0, 3.0, 3.0, 1.0]), (20, 20, 20))
    image_vox = [rng.choice(np.flatnonzero(a), int(0.8 * a.sum()), replace=False)]
    image_vox += [rng.choice(len(ijk), 60, replace=False) for _ in range(3)]
    text_vox = [rng.choice(len(ijk), 60, replace=False) for _ in range(50)]
    with h5py.File(tmp_path / "enrichment.h5", "w") as h5:  # as write_enrichment stores it
        h5.attrs["networks"] = json.dumps(list(masks))
        for stream, v in (("image", image_vox), ("text", text_vox)):
            an, vox = np.repeat(np.arange(len(v)), [len(x) for x in v]), np.concatenate(v)
            packed = pack(an, vox, np.full(len(an), 0.5), np.ones(len(an)), np.ones(len(an)),
                          len(v), keep=0)
            an, vox, sign = LayerBNs(packed["bn_indptr"], packed["bn_voxel"]).entries()
            result = network_enrichment(an, vox, sign, len(v), masks, AnalysisConfig(), None)
            store_enrichment(h5, f"{stream}/03", result)
        assert _driven(h5, masks) == {"A": {"image"}, "B": set()}
        image, text = read_enrichment(h5, "image", "03"), read_enrichment(h5, "text", "03")
    assert image["A"]["drives"].tolist() == [True, False, False, False]
    for net in ("A", "B"):  # read back as computed
        for field, value in result[net].items():
            np.testing.assert_array_equal(text[net][field], value)
