"""Group level of the hierarchy and virtual-lesion tables (bids_vlm/derivatives/group/hierarchy.py)."""
import json

import numpy as np
import pandas as pd
import pytest

from bids_vlm.analysis.group import HIERARCHY_FIELDS, LESION_FIELDS, group_hierarchy, group_lesion
from bids_vlm.derivatives.group.hierarchy import (HIERARCHY_COLUMNS, LESION_COLUMNS,
                                                  combine_hierarchy)

SPACE = "MNI152NLin2009cAsym"


def _hier(depths, n_with=(4, 0)):
    """A participant's hierarchy table: image stream (4 layers), networks A and B."""
    depths = list(depths)
    return pd.DataFrame({"stream": "image", "network": ["A", "B"], "n_layers": 4,
                         "n_voxels": [5, 3], "n_voxels_with_layer": list(n_with),
                         "mean_preferred_layer": [d * 3 for d in depths],
                         "mean_preferred_depth": depths, "sd_preferred_depth": 0.1})


def test_group_hierarchy_averages_sessions_first():
    tables = [("01", _hier([0.2, np.nan])), ("01", _hier([0.4, np.nan])),
              ("02", _hier([0.9, np.nan])), ("03", _hier([0.5, np.nan], (2, 0)))]
    out = group_hierarchy(tables)
    assert list(out.columns) == list(HIERARCHY_COLUMNS)
    out = out.set_index("network")
    per_sub = [0.3, 0.9, 0.5]  # participant 01: its two sessions' mean
    assert out.loc["A", "mean_preferred_depth"] == pytest.approx(np.mean(per_sub))
    assert out.loc["A", "sd_preferred_depth"] == pytest.approx(np.std(per_sub, ddof=1))
    assert out.loc["A", "mean_preferred_layer"] == pytest.approx(3 * np.mean(per_sub))
    assert out.loc["A", "n_participants"] == 3
    assert out.loc["A", "mean_n_voxels_with_layer"] == pytest.approx(10 / 3)
    assert np.isnan(out.loc["B", "mean_preferred_depth"]) and out.loc["B", "n_participants"] == 0


def _lesion(r_targeted, r_random, layer=2, network="A"):
    return pd.DataFrame({"network": network, "stream": "text", "layer": layer, "n_voxels": 9,
                         "n_ans": 10, "n_ans_with_bn": 4, "step": [0.0, 0.5],
                         "n_removed": [0, 5], "mean_r_targeted": r_targeted,
                         "mean_r_random": r_random})


def test_group_lesion_by_hand():
    tables = [("01", _lesion([0.5, 0.1], [0.5, 0.4])), ("01", _lesion([0.3, 0.1], [0.3, 0.2])),
              ("02", _lesion([0.6, 0.2], [0.6, 0.5], layer=3)),
              ("02", _lesion([0.2, 0.2], [0.2, 0.2], network="B"))]
    out = group_lesion(tables)
    assert list(out.columns) == list(LESION_COLUMNS)
    out = out.set_index(["network", "step"])
    a0, a5 = out.loc[("A", 0.0)], out.loc[("A", 0.5)]
    assert a0.mean_r_targeted == pytest.approx((0.4 + 0.6) / 2)  # 01: sessions' mean first
    assert a5.mean_r_targeted == pytest.approx((0.1 + 0.2) / 2)
    assert a5.mean_r_random == pytest.approx((0.3 + 0.5) / 2)
    assert a5.sd_r_random == pytest.approx(np.std([0.3, 0.5], ddof=1))
    assert a5.n_participants == 2 and a5.layers == "2;3" and a5.mean_n_removed == 5
    assert out.loc[("B", 0.5), "n_participants"] == 1
    assert np.isnan(out.loc[("B", 0.5), "sd_r_targeted"])
    assert group_lesion([("01", _lesion([0.1, 0.1], [0.1, 0.1]).iloc[:0])]).empty


def test_combine_hierarchy_writes_tables_with_sidecars(tmp_path):
    stem = f"task-x_space-{SPACE}_desc-m"
    for sub, depth in (("01", 0.2), ("02", 0.6)):
        func = tmp_path / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        for suffix, table in (("hierarchy", _hier([depth, np.nan])),
                              ("lesion", _lesion([depth, 0.0], [depth, depth]))):
            table.to_csv(func / f"sub-{sub}_{stem}_{suffix}.tsv", sep="\t", index=False,
                         na_rep="n/a")
            (func / f"sub-{sub}_{stem}_{suffix}.json").write_text(json.dumps(
                {"Model": "m", "AtlasSpace": "MNI152NLin6Asym", "DataSpace": SPACE}))
    written = combine_hierarchy(tmp_path)
    group = tmp_path / "group"
    assert sorted(p.name for p in written) == sorted(
        f"group_{stem}_{s}.{e}" for s in ("hierarchy", "lesion") for e in ("tsv", "json"))
    hier = pd.read_csv(group / f"group_{stem}_hierarchy.tsv", sep="\t")
    assert hier.mean_preferred_depth[0] == pytest.approx(0.4)
    assert hier.sd_preferred_depth[0] == pytest.approx(np.std([0.2, 0.6], ddof=1), rel=1e-5)
    for suffix, columns in (("hierarchy", HIERARCHY_COLUMNS), ("lesion", LESION_COLUMNS)):
        side = json.loads((group / f"group_{stem}_{suffix}.json").read_text())
        table = pd.read_csv(group / f"group_{stem}_{suffix}.tsv", sep="\t")
        assert all(side[c]["Description"] for c in table.columns) and set(columns) == set(
            table.columns)
        assert side["Participants"] == ["01", "02"] and side["Model"] == "m"
        assert side["DataSpace"] == SPACE


@pytest.mark.slow
def test_group_tables_are_the_participants_means(occipital):
    """On the CLI outputs (encoding on, visual voxels): each group value is the mean of the
    participants' values read from their files, computed here by hand."""
    stem = occipital / "group" / f"group_task-view_space-{SPACE}_desc-tinyclip"
    hier = pd.read_csv(f"{stem}_hierarchy.tsv", sep="\t").set_index(["stream", "network"])
    parts = [pd.read_csv(next((occipital / f"sub-{s}" / "func").glob("*_hierarchy.tsv")),
                         sep="\t").set_index(["stream", "network"]) for s in ("01", "02")]
    # the text AN is planted outside every network: no Visual voxel has a significant text layer
    assert all(t.loc[("text", "Visual"), "n_voxels_with_layer"] == 0 for t in parts)
    assert hier.loc[("text", "Visual"), "n_participants"] == 0
    for stream in ("image",):
        key = (stream, "Visual")
        depths = [t.loc[key, "mean_preferred_depth"] for t in parts]
        assert all(0 <= d <= 1 for d in depths)  # planted visual voxels have a preferred layer
        row = hier.loc[key]
        assert row.mean_preferred_depth == pytest.approx(np.mean(depths), rel=1e-4)
        assert row.sd_preferred_depth == pytest.approx(np.std(depths, ddof=1), rel=1e-3)
        assert row.n_participants == 2 and row.n_layers == 4
        assert row.mean_preferred_layer == pytest.approx(
            np.mean([t.loc[key, "mean_preferred_layer"] for t in parts]), rel=1e-4)
    assert hier.loc[("image", "Language"), "n_participants"] == 0  # no language voxels here
    assert np.isnan(hier.loc[("image", "Language"), "mean_preferred_depth"])

    lesion = pd.read_csv(f"{stem}_lesion.tsv", sep="\t").set_index(["network", "stream",
                                                                     "step"])
    parts = [pd.read_csv(next((occipital / f"sub-{s}" / "func").glob("*_lesion.tsv")),
                         sep="\t").set_index(["network", "stream", "step"])
             for s in ("01", "02")]
    visual = lesion.loc[("Visual", "image")]  # the planted image AN drives Visual in both
    assert len(visual) == 6 and (visual.n_participants == 2).all()
    for col in ("mean_r_targeted", "mean_r_random"):
        by_hand = (parts[0].loc[("Visual", "image"), col] +
                   parts[1].loc[("Visual", "image"), col]) / 2
        np.testing.assert_allclose(visual[col], by_hand, rtol=1e-4)
    assert visual.mean_r_targeted.iloc[0] > 0.05  # the planted signal is predicted
    assert "text" not in lesion.index.get_level_values("stream")  # text AN: outside networks
    side = json.loads(open(f"{stem}_lesion.json").read())
    assert all(side[c]["Description"] for c in LESION_COLUMNS)
    assert side["Participants"] == ["01", "02"] and side["LesionSteps"][-1] == 0.5


@pytest.mark.slow
def test_group_report_draws_hierarchy_and_lesion(occipital):
    page = (occipital / "group.html").read_text(encoding="utf-8")
    for name in ("hierarchy", "lesion"):
        src = f"group/figures/group_task-view_space-{SPACE}_desc-tinyclip_{name}.png"
        assert f"src='{src}'" in page and (occipital / src).stat().st_size > 1000
    assert "<h3>Hierarchy</h3>" in page and "<h3>Virtual lesion</h3>" in page


def test_the_group_tables_have_a_description_per_column():
    """The sidecars describe exactly the columns the group statistics give, in their order."""
    assert tuple(HIERARCHY_COLUMNS) == HIERARCHY_FIELDS
    assert tuple(LESION_COLUMNS) == LESION_FIELDS
