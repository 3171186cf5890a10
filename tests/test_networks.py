"""Network analyses: the shipped atlases (and the language atlas's label trap), resampling to
the BOLD grid, and hypergeometric enrichment on planted BN sets and on the CLI's outputs."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from bids_vlm.analysis.atlases import default_networks, is_mni, language_labels
from bids_vlm.analysis.networks import enrichment, network_masks
from conftest import run_cli
from datagen import Plant, make_planted_dataset


def test_language_atlas_right_hemisphere_labels():
    labels = language_labels()
    values = np.unique(np.asarray(default_networks()[1].img.dataobj))
    assert set(labels) == set(values[values > 0].astype(int))  # 1-13 and 19-31
    assert labels[1] == "left IFG orbitalis" and labels[13] == "left cerebellum VIIb / VIIIa"
    assert labels[19] == "right IFG orbitalis"  # labels_symmetrical.txt calls it 14
    assert labels[24] == "right posterior temporal" and labels[31].startswith("right cerebellum")
    assert 14 not in labels and 18 not in labels


def test_networks_resampled_to_the_bold_grid():
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    mask = nib.Nifti1Image(np.ones((46, 55, 46), np.uint8), affine)
    masks = network_masks(default_networks(), mask)
    assert list(masks) == ["Visual", "Somatomotor", "DorsalAttention", "VentralAttention",
                           "Limbic", "Frontoparietal", "Default", "Language"]
    ijk = np.argwhere(np.ones((46, 55, 46), bool))
    y = (ijk @ affine[:3, :3].T + affine[:3, 3])[:, 1]
    assert np.median(y[masks["Visual"]]) < -60  # occipital
    assert np.median(y[masks["Somatomotor"]]) > -40
    assert masks["Language"].sum() > 100 and (masks["Language"] & masks["Default"]).any()
    assert is_mni("MNI152NLin2009cAsym") and not is_mni("T1w") and not is_mni(None)


def test_enrichment_finds_planted_networks():
    rng = np.random.default_rng(0)
    n_vox, n_an = 1000, 100
    masks = {"A": np.arange(n_vox) < 200, "B": np.arange(n_vox) >= 900}
    an, vox, r = [], [], []
    for i in range(n_an):
        chosen = rng.choice(200, 40, replace=False) if i < 10 else rng.choice(n_vox, 40,
                                                                               replace=False)
        an += [i] * 40
        vox += chosen.tolist()
        r += (np.where(np.arange(40) % 4 == 0, -1, 1) * 0.5).tolist()
    res = enrichment(np.array(an), np.array(vox), np.array(r), n_an, masks)
    assert res["A"]["drives"][:10].all() and res["A"]["q"][:10].max() < 1e-10
    assert res["A"]["drives"][10:].sum() <= 4  # null ANs, BH at 0.05 across 100 ANs
    assert not res["B"]["drives"][:10].any()
    assert (res["A"]["n_pos"][:10] == 30).all() and (res["A"]["n_neg"][:10] == 10).all()
    assert np.allclose(res["A"]["frac"][:10], 1.0)
    assert abs(res["A"]["frac"][10:].mean() - 0.2) < 0.03  # chance: 200 of 1000 voxels


def test_cli_planted_an_drives_the_visual_network(tmp_path):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-9, -99, -3]  # the grid sits in occipital cortex
    shape = (6, 6, 6)
    masks = network_masks(default_networks(),
                          nib.Nifti1Image(np.ones(shape, np.uint8), affine))
    visual = np.flatnonzero(masks["Visual"])[:12].tolist()
    outside = np.flatnonzero(~np.any(list(masks.values()), axis=0))[:12].tolist()
    data = make_planted_dataset(tmp_path / "bids", n_subjects=1, shape=shape, affine=affine,
                                plants=(Plant("image", 2, 7, visual, 0.8),
                                        Plant("text", 1, 3, outside, 0.8)))
    out = tmp_path / "out"
    run_cli(data.root, out, "participant", "--layers", "1", "2", "--no-encoding", "-q",
            "-w", tmp_path / "work")
    func = out / "sub-01" / "func"
    nets = pd.read_csv(next(func.glob("*_desc-tinyclip_networks.tsv")), sep="\t",
                       keep_default_na=False).set_index("an_id")
    image_an, text_an = nets.loc["tiny-clip/image/02/7"], nets.loc["tiny-clip/text/01/3"]
    assert "Visual" in image_an.drives.split(";") and image_an.n_pos_Visual >= 12
    assert "Visual" not in text_an.drives.split(";")
    side = json.loads(next(func.glob("*_desc-tinyclip_networks.json")).read_text())
    assert "hypergeometric" in side["Networks"] and "MNI152NLin2009cAsym" in side["Networks"]
    neurons = pd.read_csv(next(func.glob("*_desc-tinyclip_neurons.tsv")), sep="\t",
                          keep_default_na=False).set_index("an_id")
    assert neurons.loc["tiny-clip/image/02/7", "drives"] == image_an.drives
