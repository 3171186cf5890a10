"""Across-subjects noise ceiling at the group level: from the participants' cleaned BOLD
(``--save-cleaned``) of the same stimulus sequence; none (INFO log) with fewer than 3 matching
participants or without cleaned BOLD."""
from __future__ import annotations

import json
import logging
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_vlm.analysis.group import matching_participants
from bids_vlm.derivatives.group.isc import collect_cleaned, combine_isc
from conftest import run_cli
from datagen import make_planted_dataset

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
STEM = "task-movie_space-MNI152NLin2009cAsym"


def _cleaned(out, sub, run, data, signature, shape=(4, 4, 4)):
    """Write (T, V) ``data`` as a participant's cleaned run with its signature."""
    func = out / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    name = f"sub-{sub}_task-movie_run-{run}_space-MNI152NLin2009cAsym_desc-cleaned_bold"
    img = nib.Nifti1Image(data.T.reshape(*shape, -1).astype(np.float32), AFFINE)
    nib.save(img, func / f"{name}.nii.gz")
    (func / f"{name}.json").write_text(json.dumps({"RunSignature": signature}))


def _simulated(out, n_subjects, signatures=("a", "b"), length=120, seed=0):
    """Subjects sharing a signal in the first 16 of 64 voxels (sd 1.5, noise sd 1)."""
    rng = np.random.default_rng(seed)
    signal = {s: rng.standard_normal((length, 64)) * np.r_[np.full(16, 1.5), np.zeros(48)]
              for s in set(signatures)}
    for i in range(n_subjects):
        for run, sig in enumerate(signatures, start=1):
            data = signal[sig] + rng.standard_normal((length, 64)) + 50 + 10 * i
            _cleaned(out, f"{i + 1:02d}", run, data, sig)


def _read(path):
    return np.asarray(nib.load(path).dataobj).ravel()


def test_isc_maps_from_simulated_participants(tmp_path):
    _simulated(tmp_path, 4)
    _simulated(tmp_path / "other", 1)  # not under sub-*: ignored
    written = combine_isc(tmp_path)
    names = sorted(p.name for p in written)
    assert names == [f"group_{STEM}_desc-isc_stat-ncsnr_statmap.nii.gz",
                     f"group_{STEM}_desc-isc_stat-rceiling_statmap.nii.gz"]
    r = _read(tmp_path / "group" / names[1])
    expected = 1.5 / np.sqrt(1.5 ** 2 + 1)  # 0.83
    assert np.abs(r[:16] - expected).max() < 0.1
    assert np.median(r[16:]) < 0.15 and r[16:].max() < r[:16].min()
    side = json.loads((tmp_path / "group" / names[1].replace(".nii.gz", ".json")).read_text())
    assert side["Participants"] == ["01", "02", "03", "04"] and side["Frames"] == 240
    assert "ncsnr" in side["NoiseCeilingMethod"] and side["RunLengths"] == [120, 120]


def test_fraction_of_the_mean_encoding_r(tmp_path):
    _simulated(tmp_path, 3)
    group = tmp_path / "group"
    group.mkdir()
    mean_r = np.r_[np.full(16, 0.415), np.full(48, 0.05)].reshape(4, 4, 4)
    name = f"group_{STEM}_desc-tinyclipImage02_stat-meanencodingr_statmap"
    nib.save(nib.Nifti1Image(mean_r.astype(np.float32), AFFINE), group / f"{name}.nii.gz")
    (group / f"{name}.json").write_text(json.dumps({"Model": "tiny-clip", "Layer": 2}))
    combine_isc(tmp_path)
    frac_path = group / f"{name.replace('meanencodingr', 'meanencodingrfrac')}.nii.gz"
    frac = _read(frac_path)
    ceiling = _read(group / f"group_{STEM}_desc-isc_stat-rceiling_statmap.nii.gz")
    np.testing.assert_allclose(frac[:16], 0.415 / ceiling[:16], rtol=1e-5)
    assert abs(np.median(frac[:16]) - 0.5) < 0.1
    assert np.isnan(frac[16:][ceiling[16:] <= 0.1]).all()
    side = json.loads(frac_path.with_name(frac_path.name.replace(".nii.gz", ".json")).read_text())
    assert side["Layer"] == 2 and side["Statistic"] == "meanencodingrfrac"


def test_only_participants_with_the_same_sequence_are_used(tmp_path, caplog):
    _simulated(tmp_path, 3, signatures=("a", "b"))
    _simulated(tmp_path / "x", 2, signatures=("a", "c"), seed=1)
    for sub in ("01", "02"):  # two more participants, with another second run
        shutil.copytree(tmp_path / "x" / f"sub-{sub}", tmp_path / f"sub-1{sub}")
        for path in (tmp_path / f"sub-1{sub}" / "func").iterdir():
            path.rename(path.with_name(path.name.replace(f"sub-{sub}", f"sub-1{sub}")))
    found = collect_cleaned(tmp_path)[STEM]
    assert [sig for sig, _ in found["101"]] == ["a", "c"]
    assert matching_participants(found) == ["01", "02", "03"]
    combine_isc(tmp_path)
    side = json.loads((tmp_path / "group" / f"group_{STEM}_desc-isc_stat-rceiling_statmap.json")
                      .read_text())
    assert side["Participants"] == ["01", "02", "03"]
    shutil.rmtree(tmp_path / "sub-03")  # now 2 + 2: no ceiling, and the log says why
    shutil.rmtree(tmp_path / "group")
    with caplog.at_level(logging.INFO, logger="bids_vlm"):
        assert combine_isc(tmp_path) == []
    assert "2 participant(s) with cleaned BOLD of the same stimulus sequence" in caplog.text
    assert not (tmp_path / "group").exists()


def test_no_cleaned_bold_no_ceiling(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bids_vlm"):
        assert combine_isc(tmp_path) == []
    assert "--save-cleaned" in caplog.text


def test_participants_on_different_grids_are_an_error(tmp_path):
    from bids_vlm.errors import DataError

    _simulated(tmp_path, 3)
    path = next((tmp_path / "sub-02" / "func").glob("*run-1*.nii.gz"))
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([2.0, 2.0, 2.0, 1.0])), path)
    with pytest.raises(DataError, match="different grids"):
        combine_isc(tmp_path)


@pytest.fixture(scope="module")
def isc_outputs(tmp_path_factory):
    """3 participants who saw the same runs; participant level with --save-cleaned (the image
    stream's layer 2 only, no lesion, to keep it short), then the group level."""
    base = tmp_path_factory.mktemp("isc")
    data = make_planted_dataset(base / "bids", n_subjects=3, same_events=True, unique=False)
    out, work = base / "out", base / "work"
    run_cli(data.root, out, "participant", "-q", "-w", work, "--save-cleaned", "--no-lesion",
            "--streams", "image", "--layers", "2", "--bn-definition", "marginal")
    run_cli(data.root, out, "group", "-q", "-w", work)
    return data, out, work


@pytest.mark.slow
def test_cli_isc_ceiling_is_higher_in_planted_voxels(isc_outputs):
    data, out, _ = isc_outputs
    cleaned = sorted((out / "sub-02" / "func").glob("*_desc-cleaned_bold.nii.gz"))
    assert len(cleaned) == 2 and nib.load(cleaned[0]).shape == (6, 6, 6, 100)
    assert nib.load(cleaned[0]).header.get_zooms()[3] == 2.0  # the TR, as BIDS requires
    signatures = {sub: json.loads(p.read_text())["RunSignature"] for sub in ("01", "02", "03")
                  for p in (out / f"sub-{sub}" / "func").glob("*run-1*_desc-cleaned_bold.json")}
    assert len(signatures) == 3 and len(set(signatures.values())) == 1
    stem = "group_task-view_space-MNI152NLin2009cAsym"
    r = _read(out / "group" / f"{stem}_desc-isc_stat-rceiling_statmap.nii.gz")
    planted = sorted({v for p in data.plants for v in p.voxels})
    # planted: beta 0.6 on a unit-variance regressor, noise sd 1 -> about sqrt(0.36 / 1.36)
    assert np.median(r[planted]) > 0.35 and np.median(r[data.noise_voxels]) < 0.15
    assert np.percentile(r[planted], 10) > np.percentile(r[data.noise_voxels], 90)
    side = json.loads((out / "group" / f"{stem}_desc-isc_stat-rceiling_statmap.json")
                      .read_text())
    assert side["Participants"] == ["01", "02", "03"] and side["Frames"] == 200
    # the image AN planted at layer 2: its layer's model explains most of the shared signal
    frac = _read(out / "group" / f"{stem}_desc-tinyclipImage02_stat-meanencodingrfrac_"
                                 "statmap.nii.gz")
    assert 0.6 < np.nanmedian(frac[data.plants[0].voxels]) < 1.4


@pytest.mark.slow
def test_cli_without_cleaned_bold_no_isc_map(isc_outputs, tmp_path):
    """The group level of the same participants without their cleaned BOLD (what the
    participant level writes without --save-cleaned): no ceiling, and the log says why."""
    data, out, _ = isc_outputs
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*desc-cleaned_bold*", "group"))
    proc = run_cli(data.root, copy, "group", "-w", tmp_path / "work", check=False)
    assert proc.returncode == 0, proc.stderr
    assert not list((copy / "group").glob("*desc-isc*"))
    assert list((copy / "group").glob("*stat-meanencodingr_statmap.nii.gz"))
    assert "across-subjects noise ceiling not computed" in proc.stderr


def _cleaned_cifti(out, sub, run, data, signature, bm):
    """Write (T, G) ``data`` as a participant's cleaned CIFTI run with its signature."""
    from nibabel.cifti2 import cifti2_axes as axes

    func = out / f"sub-{sub}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    name = f"sub-{sub}_task-movie_run-{run}_space-fsLR_den-91k_desc-cleaned_bold"
    img = nib.Cifti2Image(data.astype(np.float32),
                          header=(axes.SeriesAxis(0.0, 1.0, len(data), "SECOND"), bm))
    nib.save(img, func / f"{name}.dtseries.nii")
    (func / f"{name}.json").write_text(json.dumps({"RunSignature": signature}))


def test_isc_on_grayordinates(tmp_path):
    """The same simulation on 64 grayordinates; the first 4 are zero in one participant's
    runs (outside its data): the ceiling covers the other 60."""
    from bids_vlm import cifti

    bm = cifti.standard_91k()[np.r_[0:32, 91250:91282]]
    rng = np.random.default_rng(0)
    signal = {s: rng.standard_normal((120, 64)) * np.r_[np.full(16, 1.5), np.zeros(48)]
              for s in "ab"}
    for i in range(4):
        for run, sig in enumerate("ab", start=1):
            data = signal[sig] + rng.standard_normal((120, 64)) + 50
            data[:, :4] = 0.0 if i == 2 else data[:, :4]
            _cleaned_cifti(tmp_path, f"{i + 1:02d}", run, data, sig, bm)
    group = tmp_path / "group"
    group.mkdir()
    name = "group_task-movie_space-fsLR_den-91k_desc-tinyclipImage00_stat-meanencodingr"
    nib.save(cifti.dscalar_image(np.full((1, 64), 0.4), ["meanencodingr"], bm),
             group / f"{name}_statmap.dscalar.nii")
    (group / f"{name}_statmap.json").write_text("{}")
    written = sorted(p.name for p in combine_isc(tmp_path))
    stem = "task-movie_space-fsLR_den-91k"
    assert written == [f"group_{stem}_desc-isc_stat-ncsnr_statmap.dscalar.nii",
                       f"group_{stem}_desc-isc_stat-rceiling_statmap.dscalar.nii",
                       f"group_{stem}_desc-tinyclipImage00_stat-meanencodingrfrac_statmap"
                       ".dscalar.nii"]
    img = nib.load(tmp_path / "group" / written[1])
    assert img.header.get_axis(1) == bm[4:]
    r = np.asarray(img.dataobj)[0]
    assert np.abs(r[:12] - 1.5 / np.sqrt(1.5 ** 2 + 1)).max() < 0.1 and np.median(r[12:]) < 0.15
    frac = np.asarray(nib.load(tmp_path / "group" / written[2]).dataobj)[0]
    assert np.allclose(frac[:12], 0.4 / r[:12], rtol=1e-5)


def test_isc_covers_the_voxels_inside_every_participants_mask(tmp_path, caplog):
    """Participants' masks differ (the cleaned BOLD is 0 outside each): the maps cover their
    overlap only, whichever participant comes first; masks without overlap: no map (INFO)."""
    rng = np.random.default_rng(4)
    signal = rng.standard_normal((80, 64)) * np.r_[np.full(32, 1.5), np.zeros(32)]
    outside = {"01": [0, 1], "02": [2], "03": [], "04": [63]}
    for sub, voxels in outside.items():
        for run in (1, 2):
            data = signal + rng.standard_normal((80, 64)) + 50
            data[:, voxels] = 0.0
            _cleaned(tmp_path, sub, run, data, "a")
    combine_isc(tmp_path)
    path = tmp_path / "group" / f"group_{STEM}_desc-isc_stat-rceiling_statmap.nii.gz"
    r = _read(path)
    assert (r[[0, 1, 2, 63]] == 0).all() and (r[3:32] > 0.6).all()
    assert np.median(r[32:63]) < 0.15
    mask = nib.load(str(path).replace("rceiling", "ncsnr"))
    assert (np.asarray(mask.dataobj).ravel() != 0).sum() <= 60
    shutil.rmtree(tmp_path / "group")
    for run in (1, 2):  # participant 01's data now only in voxels no other one has
        _cleaned(tmp_path, "01", run, np.zeros((80, 64)), "a")
    with caplog.at_level(logging.INFO, logger="bids_vlm"):
        assert combine_isc(tmp_path) == []
    assert "masks do not overlap" in caplog.text


def test_isc_holds_one_run_in_memory_whatever_the_participants(tmp_path):
    """The ceiling is accumulated a participant's run at a time: its peak memory does not
    grow with the participants (loading them all held n x T x V: 68 GB for 20 participants
    of a 1-hour movie at 2 mm)."""
    import tracemalloc

    shape, length = (16, 16, 16), 100
    rng = np.random.default_rng(5)
    signal = rng.standard_normal((length, 16 ** 3)).astype(np.float32)

    def peak(n_subjects):
        root = tmp_path / f"n{n_subjects}"
        for i in range(n_subjects):
            for run in (1, 2):
                data = signal + rng.standard_normal(signal.shape, dtype=np.float32)
                _cleaned(root, f"{i + 1:02d}", run, data, "a", shape=shape)
        tracemalloc.start()
        try:
            assert len(combine_isc(root)) == 2
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    one_run = signal.nbytes  # 1.6 MB
    small, large = peak(3), peak(12)
    assert large < 1.2 * small and large < 10 * one_run, (small, large)


def test_a_truncated_cleaned_run_is_a_clear_error(tmp_path):
    from bids_vlm.errors import DataError

    _simulated(tmp_path, 3)
    path = next((tmp_path / "sub-03" / "func").glob("*run-2*.nii.gz"))
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(DataError, match="truncated or corrupted") as caught:
        combine_isc(tmp_path)
    assert caught.value.path == str(path)
