"""Group-level network, polarity and redundancy summaries (bids_vlm/derivatives/group/summaries.py)."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bids_vlm.derivatives.group.combine import combine_participants
from bids_vlm.analysis.group import group_networks, group_polarity, network_drivers

SPACE = "MNI152NLin2009cAsym"
IDS = [f"m/image/00/{u}" for u in range(3)]


def _nets(p_a, drives, frac_a, n_pos_a):
    """A participant's network table: 3 image ANs of layer 0, networks A and B."""
    table = pd.DataFrame({"an_id": IDS, "stream": "image", "layer": 0, "drives": drives})
    for net, p, frac, n_pos in (("A", p_a, frac_a, n_pos_a), ("B", [1.0] * 3, [0.0] * 3,
                                                               [0] * 3)):
        table[f"n_pos_{net}"], table[f"n_neg_{net}"] = n_pos, 0
        table[f"frac_{net}"], table[f"p_{net}"], table[f"q_{net}"] = frac, p, p
    return table


def test_group_networks_by_hand():
    one = _nets([1e-4, 0.2, 1.0], ["A", "n/a", "n/a"], [1.0, 0.5, 0.0], [6, 1, 0])
    two = _nets([1e-3, 0.6, 1.0], ["A", "n/a", "n/a"], [0.5, 0.25, 0.0], [4, 1, 0])
    out = group_networks([("01", one), ("02", two)], q=0.05)
    assert out.an_id.tolist() == IDS
    np.testing.assert_allclose(out.frac_A, [0.75, 0.375, 0.0])
    np.testing.assert_allclose(out.n_pos_A, [5, 1, 0])
    fisher = [stats.chi2.sf(-2 * np.log([a, b]).sum(), 4) for a, b in ((1e-4, 1e-3), (0.2, 0.6))]
    np.testing.assert_allclose(out.p_A, fisher + [1.0])
    # BH across all ANs x networks of the layer (3 ANs x networks A and B), as per participant
    both = stats.false_discovery_control(np.r_[fisher, 1.0, out.p_B.to_numpy()])
    np.testing.assert_allclose(out.q_A, both[:3])
    assert out.n_participants_driving_A.tolist() == [2, 0, 0]
    assert out.drives.tolist() == ["A", "n/a", "n/a"]
    assert (out.p_B == 1).all() and (out.n_participants_driving_B == 0).all()


def test_group_networks_average_sessions_first():
    ses1 = _nets([0.5, 1, 1], ["n/a"] * 3, [1.0, 0, 0], [2, 0, 0])
    ses2 = _nets([0.5, 1, 1], ["A", "n/a", "n/a"], [0.0, 0, 0], [0, 0, 0])
    other = _nets([0.5, 1, 1], ["n/a"] * 3, [1.0, 0, 0], [2, 0, 0])
    out = group_networks([("01", ses1), ("01", ses2), ("02", other)], q=0.05)
    assert out.frac_A[0] == pytest.approx((0.5 + 1.0) / 2)  # (sessions' mean, participant 2)
    assert out.n_participants_driving_A[0] == 1  # participant 01 in one of its sessions
    assert out.p_A[0] == pytest.approx(stats.chi2.sf(-6 * np.log(0.5), 6))


def test_network_drivers_by_hand():
    one = _nets([1e-4, 0.01, 1.0], ["A", "A", "n/a"], [1.0, 0.5, 0.0], [6, 1, 0])
    two = _nets([1e-3, 0.6, 1.0], ["A", "n/a", "n/a"], [0.5, 0.25, 0.0], [4, 1, 0])
    tables = [("01", one), ("02", two)]
    nets = group_networks(tables, q=0.05)
    res = network_drivers(nets, tables, has_bn=np.array([True, True, False]))
    row = res.set_index("network").loc["A"]
    assert row.n_ans == 3 and row.n_ans_driving == 1
    assert row.mean_n_ans_driving_per_participant == 1.5  # 2 in 01, 1 in 02
    assert row.n_ans_driving_any_participant == 2
    assert row.mean_frac == pytest.approx((0.75 + 0.375) / 2)  # ANs with a BN
    assert row.mean_frac_drivers == pytest.approx(0.75)
    assert res.set_index("network").loc["B", "n_ans_driving"] == 0


def _neurons(out, sub, pos, neg):
    """4 layers x 2 ANs of one stream with per-layer BN+ / BN- counts ``pos`` / ``neg``."""
    func = out / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    rows = [{"an_id": f"m/text/{k:02d}/{u}", "stream": "text", "layer": k, "unit": u,
             "n_bn_pos": pos[k], "n_bn_neg": neg[k]} for k in range(4) for u in range(2)]
    pd.DataFrame(rows).to_csv(func / f"sub-{sub}_task-x_space-{SPACE}_desc-m_neurons.tsv",
                              sep="\t", index=False)


@pytest.mark.parametrize("mirrored", [True, False])
def test_group_polarity_sign_as_planted(tmp_path, mirrored):
    rising, falling = [1, 3, 5, 8], [9, 6, 4, 1]
    _neurons(tmp_path, "01", rising, falling if mirrored else rising)
    _neurons(tmp_path, "02", [2, 2, 6, 7], [8, 7, 3, 2] if mirrored else [1, 2, 6, 9])
    combine_participants(tmp_path)
    stem = tmp_path / "group" / f"group_task-x_space-{SPACE}_desc-m"
    layers = pd.read_csv(f"{stem}_layers.tsv", sep="\t")
    np.testing.assert_allclose(layers.mean_bn_pos, [1.5, 2.5, 5.5, 7.5])  # participants' mean
    polarity = json.loads(open(f"{stem}_layers.json").read())["Polarity"]["text"]
    assert polarity["P"] == [1.5, 2.5, 5.5, 7.5]
    assert (polarity["r"] < -0.9) if mirrored else (polarity["r"] > 0.9)
    assert polarity["p"] > 0  # never 0; with 4 layers (3 prewhitened steps) never small
    assert "networks" not in polarity  # no network tables outside template space


def test_group_polarity_per_network():
    nets = pd.DataFrame({"stream": "image", "layer": [0, 1, 2], "n_pos_V": [1.0, 2.0, 3.0],
                         "n_neg_V": [3.0, 2.0, 1.0], "q_V": 1.0})
    neurons = pd.DataFrame({"stream": "image", "layer": [0, 1, 2], "mean_bn_pos": [1, 2, 3],
                            "mean_bn_neg": [1, 2, 3]})
    res = group_polarity(neurons, nets)["image"]
    assert res["r"] == pytest.approx(1.0) and res["networks"]["V"]["r"] == pytest.approx(-1.0)


@pytest.mark.slow
def test_planted_an_drives_its_network_at_group_level(occipital):
    stem = occipital / "group" / f"group_task-view_space-{SPACE}_desc-tinyclip"
    nets = pd.read_csv(f"{stem}_networks.tsv", sep="\t", keep_default_na=False).set_index(
        "an_id")
    image_an, text_an = nets.loc["tiny-clip/image/02/7"], nets.loc["tiny-clip/text/01/3"]
    assert "Visual" in image_an.drives.split(";")
    assert image_an.n_participants_driving_Visual == 2 and image_an.q_Visual < 1e-3
    assert image_an.n_pos_Visual >= 12 and image_an.n_neg_Visual == 0  # planted sign
    assert image_an.frac_Visual > 0.5
    assert text_an.drives == "n/a" and text_an.n_participants_driving_Visual == 0
    subs = [pd.read_csv(next((occipital / f"sub-{s}" / "func").glob("*_networks.tsv")),
                        sep="\t").set_index("an_id") for s in ("01", "02")]
    assert image_an.frac_Visual == pytest.approx(
        np.mean([t.loc["tiny-clip/image/02/7", "frac_Visual"] for t in subs]), abs=1e-5)
    drivers = pd.read_csv(f"{stem}_drivers.tsv", sep="\t").set_index(["network", "stream"])
    visual = drivers.loc[("Visual", "image")]
    driving = nets[(nets.stream == "image") & nets.drives.str.contains("Visual")]
    assert visual.n_ans_driving == len(driving) >= 1
    assert visual.n_ans_driving_any_participant >= visual.n_ans_driving
    assert drivers.loc[("Language", "image"), "n_ans_driving"] == 0  # no language voxels here
    neurons = pd.read_csv(f"{stem}_neurons.tsv", sep="\t").set_index("an_id")
    assert neurons.loc["tiny-clip/text/01/3", "mean_bn_neg"] >= 12  # planted negative
    assert neurons.loc["tiny-clip/text/01/3", "mean_bn_pos"] <= 1  # FDR: a stray one at most


@pytest.mark.slow
def test_group_layers_are_the_participants_mean(occipital):
    stem = occipital / "group" / f"group_task-view_space-{SPACE}_desc-tinyclip"
    layers = pd.read_csv(f"{stem}_layers.tsv", sep="\t").set_index(["stream", "layer"])
    side = json.loads(open(f"{stem}_layers.json").read())
    subs = [next((occipital / f"sub-{s}" / "func").glob("*_layers.tsv")) for s in ("01", "02")]
    tables = [pd.read_csv(p, sep="\t").set_index(["stream", "layer"]) for p in subs]
    for col in ("mean_bn_pos", "mean_bn_neg"):
        np.testing.assert_allclose(layers[col], (tables[0][col] + tables[1][col]) / 2,
                                   rtol=1e-4)
    for stream in ("image", "text"):
        res = side["Polarity"][stream]
        np.testing.assert_allclose(res["P"], layers.loc[stream, "mean_bn_pos"], rtol=1e-4)
        assert res["r"] == pytest.approx(np.corrcoef(res["P"], res["N"])[0, 1])
        assert set(res["ParticipantR"]) == {"01", "02"}
        assert "Visual" in res["networks"]
    assert layers.loc[("image", 2), "share_driving_Visual"] > 0
    jac = pd.read_csv(f"{stem}_jaccard.tsv", sep="\t")
    assert len(jac) == 2 * 4 * 4 and jac.mean_jaccard.between(0, 1).all()
