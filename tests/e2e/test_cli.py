"""CLI smoke tests: the real ``bids_vlm`` command on generated BIDS datasets."""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import PLANTED_OPTIONS, run_cli
from datagen import make_planted_dataset
from nilearn.masking import apply_mask

from bids_vlm import __version__
from bids_vlm.cli.parser import build_parser
from bids_vlm.cli.run import main
from bids_vlm.stats.bnstore import flat_entries, read_layer


def test_help_and_version(capsys):
    assert run_cli("--help").stdout.startswith("usage: bids_vlm")
    assert run_cli("--version").stdout.strip() == f"bids_vlm {__version__}"


@pytest.mark.parametrize("args", [
    [],                                             # positionals missing
    ["{bids}", "{out}", "everything"],              # bad analysis level
    ["{bids}", "{out}", "participant", "--fdr-q", "1.5"],
    ["{bids}", "{out}", "participant", "--nprocs", "0"],
    ["{bids}", "{out}", "participant", "--models", "gpt-9"],
    ["{bids}", "{out}", "participant", "--models", "open_clip:ViT-B-32:nope"],
    ["/no/such/dir", "{out}", "participant"],
    ["{bids}", "{bids}", "participant"],            # output dir = BIDS dir
    ["{bids}", "{bids}/sub-01", "participant"],     # inside the input, not under derivatives/
    ["{bids}", "{out}", "participant", "--layers", "40"],        # no such layer in tiny-clip
    ["{bids}", "{out}", "participant", "--streams", "audio"],
    ["{bids}", "{out}", "participant", "--keep-entries", "-2"],
    ["{bids}", "{out}", "participant", "--keep-entries", "all"],
])
def test_usage_errors_exit_2(args, planted, tmp_path, capsys):
    args = [a.format(bids=planted.root, out=tmp_path / "out") for a in args]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_output_equal_to_input_is_refused_with_message(planted, tmp_path):
    proc = run_cli(planted.root, planted.root, "participant", check=False)
    assert proc.returncode == 2
    assert "must not be the BIDS directory" in proc.stderr


def test_unknown_participant(planted, tmp_path):
    proc = run_cli(planted.root, tmp_path / "out", "participant", "--participant-label",
                   "sub-99", check=False)
    assert proc.returncode == 65
    assert "participant(s) 99 not found" in proc.stderr and "01, 02" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_parser_accepts_label_spellings(planted, tmp_path):
    parser = build_parser()
    for flag in ("--participant-label", "--participant_label"):
        opts = parser.parse_args([str(planted.root), str(tmp_path), "participant", flag,
                                  "sub-01", "02"])
        assert opts.participant_label == ["sub-01", "02"]


def _entries(out, sub):
    """(an_ids, an_index, voxel_index, sign of r) of a participant's BNs."""
    path = next((out / f"sub-{sub}" / "func").glob("*_desc-tinyclip_association.h5"))
    with h5py.File(path) as h5:
        ids = list(h5["an_id"].asstr()[()])
        flat = flat_entries(h5)
        return ids, flat["an_index"], flat["voxel_index"], flat["sign"]


def test_planted_voxels_are_bns_of_planted_ans(planted, planted_outputs):
    out = planted_outputs["out"]
    noise = np.array(planted.noise_voxels)
    for sub in planted.subjects:
        ids, an, vox, sign = _entries(out, sub)
        for plant in planted.plants:
            mine = an == ids.index(plant.an_id)
            found = set(vox[mine])
            # sensitivity: every planted voxel is a BN with the planted sign
            assert set(plant.voxels) <= found
            signs = sign[mine][np.isin(vox[mine], plant.voxels)]
            assert (signs == np.sign(plant.beta)).all()
            # the planted AN's false positives among pure-noise voxels (measured <= 2/192)
            assert np.isin(list(found), noise).sum() / len(noise) <= 0.05
        # over all ANs, pure-noise voxels are rarely BNs (measured ~0.0015 of AN-voxel pairs)
        assert np.isin(vox, noise).sum() / (len(ids) * len(noise)) < 0.01


def test_association_file_keeps_bns_and_top_entries(planted_whole, planted_outputs, tmp_path):
    """The _association.h5 layout (per layer: BNs with their sign, r / z / p of each AN's top
    voxels); --keep-entries -1 keeps r, z, p of every BN and changes no other output."""
    func = planted_outputs["out"] / "sub-01" / "func"
    out = tmp_path / "out"
    run_cli(planted_whole.root, out, "participant", "--participant-label", "01", "-q", "-w",
            tmp_path / "work", "--bn-definition", "marginal", "--no-encoding",
            "--keep-entries", "-1")
    default = next(func.glob("*_desc-tinyclip_association.h5"))
    full = out / "sub-01" / "func" / default.name
    with h5py.File(default) as h5, h5py.File(full) as every:
        assert h5.attrs["keep_entries"] == 100 and every.attrs["keep_entries"] == -1
        assert "bn_voxel" in h5.attrs["layout"] and "an_index" not in h5
        groups = [k for k in h5 if k not in ("an_id", "voxel_ijk")]
        assert groups and list(every) == list(h5)
        n_entries = 0
        for stream in groups:
            for layer in h5[stream]:
                mine, theirs = h5[f"{stream}/{layer}"], every[f"{stream}/{layer}"]
                n = mine.attrs["n_ans"]
                assert mine["bn_indptr"].shape == (n + 1,) and mine["bn_voxel"].dtype == np.int32
                assert mine["bn_voxel"].compression == "gzip" and mine["bn_voxel"].shuffle
                assert mine["top_voxel"].shape == (n, 100) and mine["top_p"].shape == (n, 100)
                assert "top_voxel" not in theirs and "r" not in mine
                e = len(theirs["bn_voxel"])
                assert theirs["r"].shape == theirs["z"].shape == theirs["p"].shape == (e,)
                assert not np.isnan(theirs["r"][()]).any()
                np.testing.assert_array_equal(np.sign(theirs["r"][()]),
                                              np.sign(theirs["bn_voxel"][()]))
                a, b = read_layer(mine), read_layer(theirs)  # the same BNs
                np.testing.assert_array_equal(a.indptr, b.indptr)
                np.testing.assert_array_equal(a.codes, b.codes)
                n_entries += e
        assert n_entries > 0
        top, all_r = flat_entries(h5), flat_entries(every)
    kept = ~np.isnan(top["r"])
    assert kept.any()
    np.testing.assert_array_equal(top["r"][kept], all_r["r"][kept])
    np.testing.assert_array_equal(top["p"][kept], all_r["p"][kept])
    for name in ("neurons.tsv", "networks.tsv", "layers.tsv", "jaccard.tsv"):
        mine = next(func.glob(f"*_desc-tinyclip_{name}"))
        assert (out / "sub-01" / "func" / mine.name).read_bytes() == mine.read_bytes()


def test_no_cleaned_bold_or_isc_map_without_save_cleaned(planted_outputs):
    out = planted_outputs["out"]
    assert not list(out.glob("sub-*/func/*desc-cleaned_bold*"))
    assert list((out / "group").glob("*stat-meanencodingr_statmap.nii.gz"))
    assert not list((out / "group").glob("*desc-isc*"))


def test_neuron_table_and_maps(planted, planted_outputs):
    func = planted_outputs["out"] / "sub-01" / "func"
    table = pd.read_csv(next(func.glob("*_neurons.tsv")), sep="\t")
    assert len(table) == 2 * 4 * 256  # two streams x 4 layers x 256 ANs
    row = table.set_index("an_id").loc["tiny-clip/image/02/7"]
    assert row.n_bn_pos >= 12 and row.peak_r > 0.3
    assert table.set_index("an_id").loc["tiny-clip/text/01/3"].n_bn_neg >= 12
    stem = "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage02"
    count_img = func / f"{stem}_stat-bncount_statmap.nii.gz"
    mask = nib.Nifti1Image(np.ones((6, 6, 6), np.uint8), nib.load(count_img).affine)
    counts = apply_mask(count_img, mask)
    assert counts[:12].min() >= 1 and counts[:12].mean() > 10 * counts[planted.noise_voxels].mean()
    best_r = apply_mask(func / f"{stem}_stat-r_statmap.nii.gz", mask)
    assert np.abs(best_r[:12]).min() > 0.3  # signed: another AN may be anti-correlated
    side = json.loads((func / f"{stem}_stat-r_statmap.json").read_text())
    method = side["AssociationMethod"]  # defaults, but --bn-definition marginal
    assert "exact null variance" in method and "Benjamini & Bogomolov" in method
    assert method.startswith("Pearson r")
    assert side["Layer"] == 2 and side["Stream"] == "image"


def test_dataset_description_logs_and_report(planted_outputs):
    out = planted_outputs["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "bids_vlm"
    assert desc["GeneratedBy"][0]["Version"] == __version__
    configs = sorted((out / "logs").glob("config_participant_*.toml"))
    assert configs and 'models = [\n    "tiny-clip",\n]' in configs[0].read_text()
    html = (out / "sub-01.html").read_text()
    for stream in ("image", "text"):
        fig = f"sub-01/figures/sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclip_stream-{stream}_bncount.png"
        assert fig in html and (out / fig).stat().st_size > 1000
    assert "Report: " in planted_outputs["participant"].stdout
    assert not list(out.rglob(".*.tmp*"))  # no temporary files left behind


def test_group_level_finds_planted_voxels(planted, planted_outputs):
    group = planted_outputs["out"] / "group"
    stem = "group_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage02"
    prop = nib.load(group / f"{stem}_stat-propbn_statmap.nii.gz").get_fdata().reshape(-1)
    mean_count = nib.load(group / f"{stem}_stat-meanbncount_statmap.nii.gz").get_fdata()
    mean_count = mean_count.reshape(-1)
    planted_vox = np.ravel_multi_index(np.unravel_index(range(12), (6, 6, 6)), (6, 6, 6))
    assert (prop[planted_vox] == 1.0).all()
    noise = np.array(planted.noise_voxels)
    assert mean_count[planted_vox].mean() > 10 * mean_count[noise].mean()
    table = pd.read_csv(group / "group_task-view_space-MNI152NLin2009cAsym_desc-tinyclip_neurons.tsv",
                        sep="\t").set_index("an_id")
    assert table.loc["tiny-clip/image/02/7", "n_participants_with_bn"] == 2
    assert (planted_outputs["out"] / "group.html").is_file()


def test_multiproc_gives_same_outputs_as_linear(planted_whole, planted_outputs, tmp_path):
    out = tmp_path / "mp"
    run_cli(planted_whole.root, out, "participant", "--participant-label", "01", "--nprocs", "2",
            *PLANTED_OPTIONS, "-q", "-w", tmp_path / "work")
    name = "sub-01/func/sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclip_neurons.tsv"
    assert (out / name).read_bytes() == (planted_outputs["out"] / name).read_bytes()


def test_rerun_uses_the_cache(planted_whole, planted_outputs):
    proc = run_cli(planted_whole.root, planted_outputs["out"], "participant",
                   "--participant-label", "01", "--force", *PLANTED_OPTIONS, "-w",
                   planted_outputs["work"])
    assert "finished earlier" not in proc.stderr  # --force: not skipped
    assert "tiny-clip image" not in proc.stderr  # no extraction progress: cached


def test_execution_options_do_not_rerun_a_finished_participant(planted_whole, planted_outputs):
    """Only how the run executes changes (--block-size, --batch-size, --device, --mem): the
    finished participant is skipped; forced, its nodes' cached results are used, not
    recomputed."""
    changed = ("--block-size", "37", "--batch-size", "3", "--device", "cpu", "--mem", "4GB")
    proc = run_cli(planted_whole.root, planted_outputs["out"], "participant",
                   "--participant-label", "01", *PLANTED_OPTIONS, *changed,
                   "-w", planted_outputs["work"])
    assert "finished earlier" in proc.stderr
    graph = Path(planted_outputs["work"]) / "bids_vlm_participant"
    cached = {p: p.stat().st_mtime_ns for p in graph.glob("*sub_01*/*.h5")}
    assert any("associate_" in str(p) for p in cached) and any("encode_" in str(p) for p in cached)
    run_cli(planted_whole.root, planted_outputs["out"], "participant", "--participant-label", "01",
            *PLANTED_OPTIONS, *changed, "--force", "-q", "-w", planted_outputs["work"])
    assert {p: p.stat().st_mtime_ns for p in cached} == cached  # none recomputed


def test_raw_bold_without_derivatives(tmp_path):
    """Raw BOLD: an EPI mask is computed, no space entity, and the sidecars say it is raw."""
    from datagen import Plant, make_planted_dataset

    shape = (14, 14, 14)
    ijk = np.indices(shape).reshape(3, -1).T
    head = np.linalg.norm(ijk - 6.5, axis=1) < 5.5  # a bright ball in a dark field
    centre = [int(np.ravel_multi_index((i, 7, 7), shape)) for i in range(4, 10)]
    data = make_planted_dataset(tmp_path / "raw", n_subjects=1, n_runs=2, shape=shape,
                                plants=(Plant("image", 2, 7, centre, 0.6),),
                                baseline=np.where(head, 1000.0, 5.0), with_derivatives=False)
    out = tmp_path / "out"
    proc = run_cli(data.root, out, "participant", "--layers", "2", "-w", tmp_path / "work")
    assert "no preprocessed BOLD found" in proc.stderr
    stem = "sub-01_task-view_desc-tinyclipImage02_stat-r_statmap"
    side = json.loads((out / "sub-01" / "func" / f"{stem}.json").read_text())
    assert side["BOLDInput"].startswith("none: raw BOLD (no motion correction")
    best = nib.load(out / "sub-01" / "func" / f"{stem}.nii.gz").get_fdata().reshape(-1)
    assert (best[~head] == 0).all()  # outside the computed mask
    assert (np.abs(best[centre]) > 0.3).all()
    assert np.abs(best[head]).mean() < 0.5 * np.abs(best[centre]).min()


def test_unreadable_image_inside_the_graph_gives_data_error(planted, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(planted.root, bad)
    (bad / "stimuli" / "img03.png").write_bytes(b"not a png")
    proc = run_cli(bad, tmp_path / "out", "participant", "--participant-label", "01", "-q",
                   "-w", tmp_path / "work", check=False)
    assert proc.returncode == 64, proc.stderr
    assert "img03.png: cannot read the image" in proc.stderr


def test_python_dash_m(planted):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bids_vlm", "--version"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"bids_vlm {__version__}"


def test_mem_too_small_exits_69(planted, tmp_path):
    proc = run_cli(planted.root, tmp_path / "out", "participant", "--participant-label", "01",
                   "--layers", "0", "--mem", "0.00001GB", "-q", "-w", tmp_path / "work",
                   check=False)
    assert proc.returncode == 69, proc.stderr
    assert "is too little for" in proc.stderr


def test_deleted_outputs_are_rewritten_from_the_cache(planted_whole, planted_outputs, tmp_path):
    import shutil

    out = tmp_path / "again"
    shutil.copytree(planted_outputs["out"], out)
    shutil.rmtree(out / "sub-01")
    run_cli(planted_whole.root, out, "participant", "--participant-label", "01", "-q",
            *PLANTED_OPTIONS, "-w", planted_outputs["work"])
    name = "sub-01/func/sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclip_neurons.tsv"
    assert (out / name).read_bytes() == (planted_outputs["out"] / name).read_bytes()


def test_layerwise_encoding_outputs(planted, planted_outputs):
    func = planted_outputs["out"] / "sub-01" / "func"
    stem = "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage02"
    enc = nib.load(func / f"{stem}_stat-encodingr_statmap.nii.gz").get_fdata().reshape(-1)
    noise = np.array(planted.noise_voxels)
    # planted vs noise voxels (measured: planted 0.30-0.53 with 256 ANs as features, 200 frames)
    assert enc[:12].min() > 0.25 and np.median(enc[:12]) > 0.4 and np.median(enc[noise]) < 0.1
    side = json.loads((func / f"{stem}_stat-encodingr_statmap.json").read_text())
    assert "leave-one-run-out" in side["EncodingMethod"]
    table = pd.read_csv(next(func.glob("*_desc-tinyclip_encoding.tsv")), sep="\t")
    assert len(table) == 8 and set(table.stream) == {"image", "text"}
    pref = nib.load(func / "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage_"
                           "stat-preferredlayer_statmap.nii.gz").get_fdata().reshape(-1)
    # a preferred layer only where the best layer's held-out r is significant (2 runs here)
    assert set(np.unique(pref[:12])) <= {-1, 0, 1, 2, 3} and (pref[noise] == -1).all()
    html = (planted_outputs["out"] / "sub-01.html").read_text()
    assert "Layer-wise encoding" in html and "_encodingprofile.png" in html
    assert not list(func.glob("*desc-noiseceiling*")) and not list(func.glob("*encodingrfrac*"))
    group = planted_outputs["out"] / "group"
    assert (group / "group_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage02_"
                     "stat-meanencodingr_statmap.nii.gz").is_file()


def test_noise_ceiling_from_repeated_runs(tmp_path):
    """3 runs of the same stimulus sequence: a noise-ceiling map (high where signal was
    planted) and each layer's held-out r as a fraction of it."""
    data = make_planted_dataset(tmp_path / "bids", n_subjects=1, n_runs=3, repeated=True)
    out = tmp_path / "out"
    run_cli(data.root, out, "participant", "--streams", "image", "--layers", "2", "-q",
            "-w", tmp_path / "work")
    func = out / "sub-01" / "func"
    stem = "sub-01_task-view_space-MNI152NLin2009cAsym_desc-"
    ceiling = nib.load(func / f"{stem}noiseceiling_stat-rceiling_statmap.nii.gz")
    ceiling = ceiling.get_fdata().reshape(-1)
    noise = np.array(data.noise_voxels)
    assert np.median(ceiling[:24]) > 0.35 and np.median(ceiling[noise]) < 0.2
    side = json.loads((func / f"{stem}noiseceiling_stat-rceiling_statmap.json").read_text())
    assert "runs 1, 2, 3" in side["NoiseCeilingMethod"]
    r = nib.load(func / f"{stem}tinyclipImage02_stat-encodingr_statmap.nii.gz").get_fdata()
    frac = nib.load(func / f"{stem}tinyclipImage02_stat-encodingrfrac_statmap.nii.gz")
    frac = frac.get_fdata().reshape(-1)
    expected = np.where(ceiling > 0.1, r.reshape(-1) / np.maximum(ceiling, 1e-9), np.nan)
    np.testing.assert_allclose(frac, expected, rtol=1e-4)  # NaN where the ceiling <= 0.1
    assert 0.5 < np.nanmedian(frac[:12]) < 1.5  # the planted AN's layer explains most of it


def test_activation_cache_shared_between_participants(planted, planted_outputs):
    """Both participants saw the same 20 images and 12 captions: only the first computes them."""
    computed = []
    for path in sorted(planted_outputs["work"].rglob("activations.h5")):
        with h5py.File(path) as h5:
            computed.append(int(h5.attrs["computed"]))
    assert sorted(computed) == [0, 32]
    assert len(list((planted_outputs["work"] / "activation_cache").rglob("*.npz"))) == 32


def test_streams_and_layers_selection(planted, tmp_path):
    out = tmp_path / "out"
    run_cli(planted.root, out, "participant", "--participant-label", "02", "--streams", "text",
            "--layers", "1", "3", "--no-encoding", "-q", "-w", tmp_path / "work")
    table = pd.read_csv(next((out / "sub-02" / "func").glob("*_neurons.tsv")), sep="\t")
    assert set(table.stream) == {"text"} and sorted(set(table.layer)) == [1, 3]
    assert not list((out / "sub-02" / "func").glob("*_encoding.tsv"))


def test_attn_neurons_have_their_own_outputs(planted, tmp_path):
    out = tmp_path / "out"
    run_cli(planted.root, out, "participant", "--participant-label", "01", "--neurons", "attn",
            "--layers", "2", "--no-encoding", "-q", "-w", tmp_path / "work")
    func = out / "sub-01" / "func"
    table = pd.read_csv(next(func.glob("*_desc-tinyclipqk_neurons.tsv")), sep="\t")
    assert len(table) == 2 * 64 and table.an_id.str.contains("/02/qk").all()
    side = json.loads(next(func.glob("*_desc-tinyclipqkImage02_stat-r_statmap.json")).read_text())
    assert side["ANDefinition"].startswith("attn: query x key") and side["Model"] == "tiny-clip-qk"


def test_layer_summaries_and_redundancy_maps(planted, planted_outputs):
    func = planted_outputs["out"] / "sub-01" / "func"
    stem = "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclip"
    layers = pd.read_csv(func / f"{stem}_layers.tsv", sep="\t")
    neurons = pd.read_csv(func / f"{stem}_neurons.tsv", sep="\t")
    mine = neurons[(neurons.stream == "image") & (neurons.layer == 2)]
    row = layers[(layers.stream == "image") & (layers.layer == 2)].iloc[0]
    assert row.n_ans == 256 and row.mean_bn_pos == pytest.approx(mine.n_bn_pos.mean(), rel=1e-5)
    side = json.loads((func / f"{stem}_layers.json").read_text())
    assert set(side["Polarity"]) >= {"image", "text", "Description"}
    jac = pd.read_csv(func / f"{stem}_jaccard.tsv", sep="\t")
    assert len(jac) == 2 * 4 * 4 and jac.mean_jaccard.between(0, 1).all()
    total = nib.load(func / "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage_"
                            "stat-bncount_statmap.nii.gz").get_fdata()
    per_layer = sum(nib.load(func / f"{stem}Image{k:02d}_stat-bncount_statmap.nii.gz")
                    .get_fdata() for k in range(4))
    assert np.array_equal(total, per_layer) and total.reshape(-1)[:12].min() > 0


def test_group_consistency_and_encoding_test(planted, planted_outputs):
    group = planted_outputs["out"] / "group"
    table = pd.read_csv(group / "group_task-view_space-MNI152NLin2009cAsym_desc-tinyclip_"
                                "neurons.tsv", sep="\t").set_index("an_id")
    assert table.loc["tiny-clip/image/02/7", "consistency"] > 0.7
    assert table.loc["tiny-clip/image/02/7", "consistency"] > table.consistency.median()
    stem = "group_task-view_space-MNI152NLin2009cAsym_desc-tinyclipImage02"
    t = nib.load(group / f"{stem}_stat-encodingt_statmap.nii.gz").get_fdata().reshape(-1)
    assert (t[:12] > 0).all()
    assert (group / f"{stem}_stat-encodingq_statmap.nii.gz").is_file()


def test_paper_mode_outputs_and_quiet(planted, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(planted.root, out, "participant", "--participant-label", "01", "--layers",
                   "2", "--paper-mode", "--n-atoms", "8", "--no-encoding", "-q",
                   "-w", tmp_path / "work")
    assert "association" not in proc.stderr and "batch/s" not in proc.stderr  # -q: no bars
    func = out / "sub-01" / "func"
    table = pd.read_csv(next(func.glob("*_desc-tinyclip_atoms.tsv")), sep="\t")
    assert len(table) == 16 and set(table.stream) == {"image", "text"}
    assert table.n_ans.between(1, 256).all() and table.top_ans.str.startswith("tiny-clip/").all()
    tmap = nib.load(func / "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclipText02_"
                           "stat-atomt_statmap.nii.gz")
    assert tmap.shape == (6, 6, 6, 8)
    side = json.loads(next(func.glob("*_desc-tinyclip_atoms.json")).read_text())
    assert "MiniBatchDictionaryLearning" in side["PaperMode"]
    with h5py.File(next(func.glob("*_desc-tinyclip_atoms.h5"))) as h5:
        assert list(h5["text__02__shape"][()]) == [256, 8, 400]  # 2 runs x 200 samples


def test_fir_delays(planted_whole, tmp_path):
    """The whole regressor planted, the paper's marginal BNs: FIR windows find it and encode it
    (with the penalties chosen once per layer: --alpha-cv shared)."""
    out = tmp_path / "out"
    run_cli(planted_whole.root, out, "participant", "--participant-label", "01", "--layers", "2",
            "--hrf-model", "fir", "--fir-delays", "2", "3", "4", "--bn-definition", "marginal",
            "--alpha-cv", "shared", "-q", "-w", tmp_path / "work")
    func = out / "sub-01" / "func"
    ids = _entries(out, "01")
    found = set(ids[2][ids[1] == ids[0].index("tiny-clip/image/02/7")])
    assert len(found & set(range(12))) >= 9  # planted voxels found with a 4-8 s FIR window
    side = json.loads(next(func.glob("*Image02_stat-encodingr_statmap.json")).read_text())
    assert side["HRFModel"] == "fir"
    assert "over every run, once per layer (--alpha-cv shared" in side["EncodingMethod"]
    enc = nib.load(next(func.glob("*Image02_stat-encodingr_statmap.nii.gz"))).get_fdata()
    assert enc.reshape(-1)[:12].mean() > 0.3


def test_banded_encoding_outputs(planted, planted_outputs):
    func = planted_outputs["out"] / "sub-01" / "func"
    stem = "sub-01_task-view_space-MNI152NLin2009cAsym_desc-tinyclipBanded02"
    image = nib.load(func / f"{stem}_stat-splitr2image_statmap.nii.gz").get_fdata().reshape(-1)
    text = nib.load(func / f"{stem}_stat-splitr2text_statmap.nii.gz").get_fdata().reshape(-1)
    assert image[:12].mean() > 0.05 and image[:12].mean() > 3 * abs(text[:12].mean())
    assert text[12:24].mean() > 0.05 and text[12:24].mean() > 3 * abs(image[12:24].mean())
    table = pd.read_csv(next(func.glob("*_desc-tinyclip_bandedencoding.tsv")), sep="\t")
    assert list(table.layer) == [2, 3]  # --banded-layers 2 last
    assert not list(func.glob("*desc-tinyclipBanded01_*"))


def test_changed_stimulus_file_reruns_with_the_new_content(planted, tmp_path):
    import shutil

    data = tmp_path / "bids"
    shutil.copytree(planted.root, data)
    args = ["participant", "--participant-label", "01", "--layers", "2", "--no-encoding", "-q",
            "-w", tmp_path / "work"]
    run_cli(data, tmp_path / "out", *args)
    from PIL import Image

    Image.new("RGB", (48, 48), (10, 200, 30)).save(data / "stimuli" / "img17.png")
    run_cli(data, tmp_path / "out", *args)
    computed = [int(h5py.File(p).attrs["computed"])
                for p in (tmp_path / "work").rglob("activations.h5")]
    assert computed == [1]  # the node reran; only the changed image went through the model


def test_bad_inputs_found_inside_the_graph_have_clear_errors(planted, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(planted.root, bad)
    bold = next((bad / "derivatives").rglob("sub-01_task-view_run-1_*desc-preproc_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[:3000])  # truncated gzip
    proc = run_cli(bad, tmp_path / "out", "participant", "--participant-label", "01", "-q",
                   "-w", tmp_path / "work", check=False)
    assert proc.returncode == 64 and "cannot read" in proc.stderr, proc.stderr
    assert bold.name in proc.stderr
    proc = run_cli(planted.root, tmp_path / "out2", "participant", "-q", "-w", "/proc/nope",
                   check=False)
    assert proc.returncode == 73 and "work directory" in proc.stderr


def test_no_stimulus_of_the_selected_stream(planted, tmp_path):
    import shutil

    text_only = tmp_path / "text_only"
    shutil.copytree(planted.root, text_only)
    for events in text_only.rglob("*_events.tsv"):
        pd.read_csv(events, sep="\t").drop(columns="stim_file").to_csv(events, sep="\t",
                                                                       index=False)
    proc = run_cli(text_only, tmp_path / "out", "participant", "--streams", "image", "-q",
                   "-w", tmp_path / "work", check=False)
    assert proc.returncode == 65 and "selected stream(s) (image)" in proc.stderr


def test_execution_options_reach_nipype(planted, tmp_path, monkeypatch):
    from nipype.pipeline.engine import Workflow

    import tomllib

    import torch

    from bids_vlm.config import Execution, read_execution

    threads = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    calls = []
    monkeypatch.setattr(Workflow, "run", lambda self, plugin=None, plugin_args=None:
                        calls.append((plugin, plugin_args, self.config["execution"]
                                      ["stop_on_first_crash"])))
    code = main([str(planted.root), str(tmp_path / "out"), "participant", "--plugin", "SLURM",
                 "--plugin-args", '{"sbatch_args": "-p short"}', "--keep-going",
                 "--omp-nthreads", "1", "--device", "cpu", "--block-size", "37",
                 "--batch-size", "3", "--mem", "2GB", "-q", "-w", str(tmp_path / "work")])
    assert code == 0 and calls == [("SLURM", {"sbatch_args": "-p short"}, False)]
    assert os.environ["OMP_NUM_THREADS"] == "1" and torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    # the nodes read the execution settings from a file per participant (not their caches)
    files = sorted((tmp_path / "work" / "execution").glob("sub-*"))
    assert [f.name for f in files] == ["sub-01", "sub-02"]
    execution = read_execution(files[0])
    assert (execution.device, execution.block_size, execution.batch_size) == ("cpu", 37, 3)
    assert execution.mem_gb == 2.0 and execution.plugin == "SLURM" and execution.omp_nthreads == 1
    log = next((tmp_path / "out" / "logs").glob("config_participant_*.toml"))
    logged = tomllib.loads(log.read_text())
    assert logged["execution"]["block_size"] == 37 and "block_size" not in logged["stats"]
    assert "device" not in logged["model"] and "batch_size" not in logged["model"]
    assert Execution(nprocs=3).plugin_and_args() == ("MultiProc", {"n_procs": 3})
    assert Execution().plugin_and_args() == ("Linear", {})


def test_config_file_values_and_command_line_overrides(planted, tmp_path):
    parser = build_parser()
    toml = tmp_path / "cfg.toml"
    toml.write_text('fdr_q = 0.01\nmodels = ["tiny-clip"]\nlayers = [1, 2]\nno_encoding = true\n'
                    'hrf_model = "glover"\n')
    from bids_vlm.cli.parser import apply_config_file

    argv = [str(planted.root), str(tmp_path / "o"), "participant", "--config-file", str(toml),
            "--fdr-q", "0.2"]
    apply_config_file(parser, argv)
    opts = parser.parse_args(argv)
    assert opts.fdr_q == 0.2 and opts.layers == [1, 2] and opts.no_encoding
    assert opts.hrf_model == "glover"
    toml.write_text("fdr_k = 3\n")
    with pytest.raises(SystemExit) as exc:
        main(argv[:5])
    assert exc.value.code == 2


def test_default_models_come_from_the_image_and_random_ones_say_so(planted, planted_outputs,
                                                                   monkeypatch, capsys):
    """The image sets BIDS_VLM_DEFAULT_MODELS to what it baked (the default --models), and a
    run with a random-weight test model says so in the log and at the top of the reports."""
    from bids_vlm.cli.parser import build_parser
    from bids_vlm.models import random_weights_warning

    assert build_parser().get_default("models") == ["tiny-clip"]
    monkeypatch.setenv("BIDS_VLM_DEFAULT_MODELS", "clip-vit-b-32 clip-vit-b-16")
    assert build_parser().get_default("models") == ["clip-vit-b-32", "clip-vit-b-16"]
    monkeypatch.setenv("BIDS_VLM_DEFAULT_MODELS", "clip-vit-b-99")
    with pytest.raises(SystemExit) as exc:
        main([str(planted.root), str(planted.root.parent / "o"), "participant"])
    assert exc.value.code == 2
    assert "--models (default from $BIDS_VLM_DEFAULT_MODELS): unknown model 'clip-vit-b-99'" \
        in capsys.readouterr().err
    assert random_weights_warning(["clip-vit-b-32", "hf-clip:/m"]) == ""
    assert random_weights_warning(["tiny-clip", "tiny-meter"]).startswith(
        "tiny-clip and tiny-meter have seeded random weights: a test model")
    assert "bids_vlm WARNING: tiny-clip has seeded random weights" in \
        planted_outputs["participant"].stderr
    for report in ("sub-01.html", "group.html"):
        text = (planted_outputs["out"] / report).read_text()
        assert "Not a scientific result:</strong> tiny-clip has seeded random weights" in text


def test_group_level_waits_for_no_participant_being_analysed(planted, planted_outputs, capsys):
    """While a participant's run holds its lock, the group level (which would read that
    participant's half-written outputs) exits 75 naming the lock, and writes nothing."""
    from bids_vlm import locks

    out = planted_outputs["out"]
    before = sorted(p.name for p in (out / "group").iterdir())
    with locks.acquire(locks.output_lock_path(out, "sub-02"), "sub-02"):
        code = main([str(planted.root), str(out), "group", "-q"])
    assert code == 75
    err = capsys.readouterr().err
    assert "sub-02 is being analysed by process" in err and ".sub-02.lock" in err
    assert sorted(p.name for p in (out / "group").iterdir()) == before


def test_marginal_and_unique_bns_of_a_whole_regressor(planted_whole, tmp_path):
    """A voxel that follows an AN's whole regressor is its BN under --bn-definition marginal;
    under unique (default) only when the AN has its own part: tiny-clip's image AN 02/7 is 95%
    its layer's shared components (removed_share) and loses most of its BNs, the text AN 01/3
    (25% shared) keeps them. The neurons and layer tables say how shared each AN is."""
    out = {}
    for definition in ("marginal", "unique"):
        out[definition] = tmp_path / definition
        run_cli(planted_whole.root, out[definition], "participant", "--participant-label", "01",
                "--layers", "1", "2", "--bn-definition", definition, "--no-encoding",
                "--n-surrogates", "0", "-q", "-w", tmp_path / f"work_{definition}")
    tables = {d: pd.read_csv(next((o / "sub-01" / "func").glob("*_neurons.tsv")), sep="\t")
              .set_index("an_id") for d, o in out.items()}
    image, text = "tiny-clip/image/02/7", "tiny-clip/text/01/3"
    assert tables["marginal"].loc[image, "n_bn_pos"] >= 12
    assert tables["marginal"].loc[text, "n_bn_neg"] >= 12
    assert tables["unique"].loc[text, "n_bn_neg"] >= 12
    assert tables["unique"].loc[image, "n_bn_pos"] < 6
    assert tables["unique"].loc[image, "removed_share"] > 0.8
    assert tables["unique"].loc[text, "removed_share"] < 0.5
    assert tables["marginal"].removed_share.isna().all()
    func = out["unique"] / "sub-01" / "func"
    side = json.loads(next(func.glob("*Image02_stat-r_statmap.json")).read_text())
    assert side["AssociationMethod"].startswith("partial Pearson r")
    assert "top 3 principal components" in side["AssociationMethod"]
    layers = pd.read_csv(next(func.glob("*_layers.tsv")), sep="\t")
    assert layers.mean_inter_an_abs_r.between(0.05, 1).all()
    assert layers.mean_removed_share.between(0.1, 1).all()

