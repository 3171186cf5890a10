"""Stage 5: BOLD masking and cleaning (bids_vlm/design/cleaning.py)."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_vlm.config import BoldConfig
from bids_vlm.errors import DataError
from bids_vlm.design.cleaning import MOTION, clean_bold, load_mask, select_confounds

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
N_SCANS, TR = 80, 2.0


def _confound_table(n, rng, n_comp=8, n_cos=3):
    cols = {c: rng.standard_normal(n) for c in MOTION}
    for c in MOTION:
        cols[f"{c}_derivative1"] = np.r_[np.nan, np.diff(cols[c])]
        cols[f"{c}_power2"] = cols[c] ** 2
    for i in reversed(range(n_comp)):  # stored out of order on purpose
        cols[f"a_comp_cor_{i:02d}"] = rng.standard_normal(n)
    for i in range(n_cos):
        cols[f"cosine{i:02d}"] = np.cos(np.pi * (i + 1) * (np.arange(n) + 0.5) / n)
    cols["global_signal"] = rng.standard_normal(n)
    cols["t_comp_cor_00"] = rng.standard_normal(n)
    return pd.DataFrame(cols)


def test_select_confounds_default_strategy():
    table = _confound_table(10, np.random.default_rng(0))
    out = select_confounds(table, BoldConfig())
    expected = (list(MOTION) + [f"{c}_derivative1" for c in MOTION]
                + [f"a_comp_cor_{i:02d}" for i in range(6)] + ["cosine00", "cosine01", "cosine02"])
    assert list(out.columns) == expected
    assert not out.isna().any().any()
    assert (out.iloc[0][[f"{c}_derivative1" for c in MOTION]] == 0).all()
    np.testing.assert_array_equal(out["trans_x"], table["trans_x"])


def test_select_confounds_subset_and_n_acompcor():
    table = _confound_table(10, np.random.default_rng(0))
    out = select_confounds(table, BoldConfig(confounds=("acompcor",), n_acompcor=2))
    assert list(out.columns) == ["a_comp_cor_00", "a_comp_cor_01"]
    out = select_confounds(table, BoldConfig(confounds=("motion", "cosine")))
    assert list(out.columns) == list(MOTION) + ["cosine00", "cosine01", "cosine02"]


def _bold(tmp_path, data4d, name="bold.nii.gz", affine=AFFINE):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data4d.astype(np.float32), affine), path)
    return path


def _mask(tmp_path, data3d, name="mask.nii.gz", affine=AFFINE):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data3d.astype(np.uint8), affine), path)
    return path


@pytest.fixture
def planted(tmp_path):
    """BOLD of 3x3x3 voxels: noise + 5 * trans_x everywhere, voxel (0,0,0) constant."""
    rng = np.random.default_rng(1)
    table = _confound_table(N_SCANS, rng)
    data = 100 + rng.standard_normal((3, 3, 3, N_SCANS)) + 5 * table["trans_x"].to_numpy()
    data[0, 0, 0] = 50.0
    conf = tmp_path / "confounds.tsv"
    table.to_csv(conf, sep="\t", index=False, na_rep="n/a")
    return _bold(tmp_path, data), _mask(tmp_path, np.ones((3, 3, 3))), conf, table


@pytest.mark.parametrize("high_pass, tol", [(1 / 128, 0.1), (0.0, 1e-4)])
def test_clean_bold_zscored_and_confound_removed(planted, high_pass, tol):
    # without the high-pass filter the output is exactly orthogonal to the raw confound
    bold, mask, conf, table = planted
    raw = nib.load(bold).get_fdata().reshape(27, N_SCANS).T
    trans_x = table["trans_x"].to_numpy()
    assert np.corrcoef(raw[:, 1], trans_x)[0, 1] > 0.9  # the confound dominates before cleaning
    out = clean_bold(bold, nib.load(mask), TR, conf, BoldConfig(high_pass=high_pass))
    assert out.shape == (N_SCANS, 27) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], 0.0)  # constant voxel (first in mask order)
    live = out[:, 1:].astype(np.float64)
    np.testing.assert_allclose(live.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(live.std(0, ddof=1), 1, atol=1e-5)
    r = [np.corrcoef(live[:, v], trans_x)[0, 1] for v in range(26)]
    assert np.max(np.abs(r)) < tol


def test_clean_bold_without_confounds_keeps_signal(planted):
    bold, mask, _, table = planted
    out = clean_bold(bold, nib.load(mask), TR, None, BoldConfig())
    r = np.corrcoef(out[:, 5], table["trans_x"])[0, 1]
    assert r > 0.9


def test_clean_bold_confound_rows_mismatch(planted, tmp_path):
    bold, mask, _, table = planted
    short = tmp_path / "short.tsv"
    table.iloc[:-1].to_csv(short, sep="\t", index=False, na_rep="n/a")
    with pytest.raises(DataError, match=f"{N_SCANS - 1} rows.*{N_SCANS} volumes") as err:
        clean_bold(bold, nib.load(mask), TR, short)
    assert str(short) in str(err.value)


def test_load_mask_same_grid(tmp_path):
    bold = _bold(tmp_path, np.ones((4, 4, 4, 3)))
    m = np.zeros((4, 4, 4))
    m[1:3, 1:3, 1:3] = 7
    out = load_mask(bold, _mask(tmp_path, m))
    np.testing.assert_array_equal(np.asarray(out.dataobj), m > 0)
    np.testing.assert_allclose(out.affine, AFFINE)


def test_load_mask_resampled_to_bold_grid(tmp_path):
    bold = _bold(tmp_path, np.ones((6, 6, 6, 3)))
    fine = np.zeros((12, 12, 12))
    fine[2:8, 2:8, 2:8] = 1  # 1.5 mm voxels 2..7 = bold voxels 1..3 (nearest centres 2, 4, 6)
    out = load_mask(bold, _mask(tmp_path, fine, affine=np.diag([1.5, 1.5, 1.5, 1.0])))
    assert out.shape == (6, 6, 6)
    np.testing.assert_allclose(out.affine, AFFINE)
    expected = np.zeros((6, 6, 6), bool)
    expected[1:4, 1:4, 1:4] = True
    np.testing.assert_array_equal(np.asarray(out.dataobj) > 0, expected)


def test_load_mask_computes_epi_mask(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (12, 12, 12, 4))
    data[2:10, 2:10, 2:10] += 1000
    out = load_mask(_bold(tmp_path, data))
    m = np.asarray(out.dataobj) > 0
    assert m.shape == (12, 12, 12)
    assert m[6, 6, 6] and m.sum() > 100
    assert not m[:2].any() and not m[10:].any()  # nothing outside the bright cube


def test_load_mask_empty_is_data_error(tmp_path):
    bold = _bold(tmp_path, np.ones((4, 4, 4, 3)))
    mask = _mask(tmp_path, np.zeros((4, 4, 4)))
    with pytest.raises(DataError, match="empty") as err:
        load_mask(bold, mask)
    assert str(mask) in str(err.value)


def test_non_numeric_confounds_are_a_data_error(tmp_path):
    import nibabel as nib
    import numpy as np
    import pandas as pd
    import pytest

    from bids_vlm.errors import DataError
    from bids_vlm.design.cleaning import clean_bold

    data = np.random.default_rng(0).standard_normal((3, 3, 3, 20)) + 100
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(data.astype("float32"), np.eye(4)), bold)
    conf = pd.DataFrame({"trans_x": ["0.1"] * 19 + ["abc"]})
    conf.to_csv(tmp_path / "conf.tsv", sep="\t", index=False)
    mask = nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), np.eye(4))
    with pytest.raises(DataError, match="trans_x hold non-numeric"):
        clean_bold(bold, mask, 2.0, tmp_path / "conf.tsv")


def test_removed_dimensions_follow_the_cleaning():
    from bids_vlm.design.cleaning import removed_dimensions

    rng = np.random.default_rng(0)
    # mean + linear trend + 3 cosines below 1/128 Hz for 100 scans of 2 s
    assert removed_dimensions(100, 2.0) == 5
    assert removed_dimensions(100, 2.0, rng.normal(size=(100, 6))) == 11
    assert removed_dimensions(100, 2.0, None, BoldConfig(high_pass=0.0)) == 2
    conf = rng.normal(size=(100, 3))
    assert removed_dimensions(100, 2.0, np.c_[conf, 2 * conf[:, :1]]) == 8  # collinear once


def test_cleaned_regressor_and_noise_keep_the_null_distribution():
    """A slow HRF regressor with an onset transient and white-noise voxels, both cleaned alike:
    their correlations have the null spread of n - removed dimensions (the Butterworth
    high-pass that the cosine basis replaced gave 1.7 x that spread on such data)."""
    from nilearn.glm.first_level import compute_regressor

    from bids_vlm.design.cleaning import clean_signals, removed_dimensions

    rng = np.random.default_rng(1)
    n, tr = 100, 2.0
    frames = np.arange(n) * tr
    onsets = np.arange(0, n * tr, 2.0)
    amplitude = 1.0 + 0.05 * np.cumsum(rng.normal(size=onsets.size))  # slow, far from zero
    reg = compute_regressor(np.vstack([onsets, np.full(onsets.size, 2.0), amplitude]), "spm",
                            frames)[0][:, 0]
    conf = rng.normal(size=(n, 6))
    x = clean_signals(reg[:, None], tr, conf)[:, 0]
    noise = clean_signals(rng.normal(size=(n, 4000)), tr, conf)
    r = noise.T @ x / (n - 1)
    expected = 1.0 / np.sqrt(n - removed_dimensions(n, tr, conf))
    assert abs(r.std() / expected - 1.0) < 0.08, (r.std(), expected)


def test_non_steady_state_volumes_are_censored_on_both_sides(tmp_path):
    """fMRIPrep's non_steady_state_outlier_XX columns are always regressed out: the flagged
    frames are 0 after cleaning (BOLD and regressors alike), each costs a degree of freedom,
    and the noise lag sums do not see them."""
    from scipy.signal import detrend

    from bids_vlm.stats.autocorr import lag_sums
    from bids_vlm.design.cleaning import (censored_frames, clean_signals, noise_lag_sums, read_confounds,
                                  removed_dimensions)

    rng = np.random.default_rng(3)
    n = 60
    table = _confound_table(n, rng, n_cos=0)
    for i in range(2):
        table[f"non_steady_state_outlier_{i:02d}"] = (np.arange(n) == i).astype(float)
    path = tmp_path / "confounds.tsv"
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    assert list(select_confounds(table, BoldConfig(confounds=("motion",))).columns)[-2:] == [
        "non_steady_state_outlier_00", "non_steady_state_outlier_01"]
    conf = read_confounds(path, n, BoldConfig(confounds=("motion",)))
    np.testing.assert_array_equal(censored_frames(path, n), np.arange(n) < 2)
    assert removed_dimensions(n, TR, conf) == removed_dimensions(n, TR, conf[:, :6]) + 2
    data = rng.normal(size=(n, 50))
    data[:2] += 500.0  # the bright first volumes before steady state
    cleaned = clean_signals(data, TR, conf)
    np.testing.assert_allclose(cleaned[:2], 0.0, atol=1e-8)
    sums = noise_lag_sums(data, 4, censored_frames(path, n))
    kept = detrend(data[2:], axis=0)
    np.testing.assert_allclose(sums, lag_sums(np.r_[np.zeros((2, 50)), kept], [n], 4),
                               rtol=1e-4, atol=1e-3)
    assert censored_frames(None, n) is None


def test_fmriprep_1x_confound_names_are_read():
    """fMRIPrep 1.0-1.1 confounds (X, Y, Z, RotX, RotY, RotZ, aCompCorNN, CosineNN,
    NonSteadyStateOutlierNN) are selected as their >= 1.2 names (BOLD5000's derivatives)."""
    from bids_vlm.design.cleaning import fmriprep_1x_names

    rng = np.random.default_rng(4)
    n = 12
    old = pd.DataFrame({c: rng.normal(size=n) for c in
                        ["CSF", "X", "Y", "Z", "RotX", "RotY", "RotZ", "aCompCor00",
                         "aCompCor01", "Cosine00", "NonSteadyStateOutlier00"]})
    out = select_confounds(old, BoldConfig(n_acompcor=2))
    assert list(out.columns) == list(MOTION) + ["a_comp_cor_00", "a_comp_cor_01", "cosine00",
                                                "non_steady_state_outlier00"]
    np.testing.assert_array_equal(out["rot_y"], old["RotY"])
    new = _confound_table(n, rng)
    assert fmriprep_1x_names(new) is new


@pytest.mark.parametrize("dtype", ["float32", "int16-scaled", "float64", "c-order"])
def test_masked_series_is_nilearns_apply_mask(tmp_path, dtype):
    """The in-mask series equal nilearn's apply_mask (values and voxel order) for the data
    types of real BOLD files, read back from disk (Fortran order) or held in C order."""
    from nilearn import masking

    from bids_vlm.design.cleaning import masked_series

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = nib.Nifti1Image((rng.random((9, 11, 7)) > 0.4).astype(np.uint8), affine)
    data = rng.standard_normal((9, 11, 7, 12)) * 100
    kind = {"int16-scaled": np.int16, "float64": np.float64}.get(dtype, np.float32)
    img = nib.Nifti1Image(data.astype(kind), affine)
    if dtype == "int16-scaled":
        img.header.set_slope_inter(0.5, 3.0)
    if dtype == "c-order":
        img = nib.Nifti1Image(np.ascontiguousarray(data.astype(np.float32)), affine)
    else:
        nib.save(img, tmp_path / "bold.nii.gz")
        img = nib.load(tmp_path / "bold.nii.gz")
    ours = masked_series(img, mask)
    theirs = masking.apply_mask(img, mask, ensure_finite=False)
    assert ours.shape == (12, int(mask.get_fdata().sum()))
    # read a few frames at a time (blocks that do not divide the run): the same
    np.testing.assert_array_equal(masked_series(img, mask, frames=5), ours)
    # the type nibabel reads (float64 for float64 or scaled data), no float64 copy of float32
    assert ours.dtype == theirs.dtype
    assert ours.dtype == np.float32 or dtype in ("float64", "int16-scaled")
    np.testing.assert_array_equal(ours, theirs)


def test_masked_series_reads_a_gzipped_run_in_blocks_of_frames(tmp_path):
    """A whole gzipped run read at once held about twice its 4D size (Python's gzip copies
    what it decompresses): blocks of frames keep the peak near the in-mask result."""
    import tracemalloc

    from bids_vlm.design.cleaning import masked_series

    rng = np.random.default_rng(1)
    data = rng.standard_normal((16, 16, 16, 240)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "bold.nii.gz")
    mask = nib.Nifti1Image((rng.random((16, 16, 16)) > 0.5).astype(np.uint8), np.eye(4))
    img = nib.load(tmp_path / "bold.nii.gz", keep_file_open=True)
    tracemalloc.start()
    try:
        out = masked_series(img, mask)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, data[mask.get_fdata() > 0].T)
    assert peak < out.nbytes + 0.5 * data.nbytes, (peak, out.nbytes, data.nbytes)


def test_masked_series_other_grid_is_nilearns_error():
    from bids_vlm.design.cleaning import masked_series

    mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    bold = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="affine"):
        masked_series(bold, mask)


def test_load_cleaned_concatenates_the_runs_in_order(tmp_path):
    from bids_vlm.design.cleaning import load_cleaned

    rng = np.random.default_rng(0)
    runs = [rng.standard_normal((n, 7)).astype(np.float32) for n in (5, 3, 4)]
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"run-{i}_cleaned.npy")
        np.save(paths[-1], run)
    got = load_cleaned(paths)
    np.testing.assert_array_equal(got, np.concatenate(runs))
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
    # a run in Fortran order, and one in float64, read as NumPy reads them
    np.save(paths[0], np.asfortranarray(runs[0]))
    np.save(paths[2], runs[2].astype(np.float64))
    got = load_cleaned(paths)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.concatenate(runs))
    np.save(paths[2], runs[2])
    # a file cut short, and runs of different widths
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-8])
    with pytest.raises(ValueError, match="ends before"):
        load_cleaned(paths)
    np.save(paths[1], np.zeros((3, 6), np.float32))
    with pytest.raises(ValueError, match="different widths"):
        load_cleaned(paths)


def test_load_cleaned_does_not_map_the_files(tmp_path, monkeypatch):
    """The runs are read, not memory-mapped (a mapped file's pages count in the resident
    memory while it is copied: the BOLD twice over at load time)."""
    from bids_vlm.design.cleaning import load_cleaned

    run = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a_cleaned.npy", run)
    real_load = np.load

    def no_mapping(*args, **kwargs):
        assert kwargs.get("mmap_mode") is None, "a cleaned run was memory-mapped"
        return real_load(*args, **kwargs)
    monkeypatch.setattr(np, "load", no_mapping)
    np.testing.assert_array_equal(load_cleaned([tmp_path / "a_cleaned.npy"] * 2),
                                  np.concatenate([run, run]))


def test_clean_signals_in_chunks_equal_one_nilearn_call():
    """Columns cleaned chunk by chunk (two threads) are bit for bit one signal.clean of the
    whole float64 array, constant columns in any chunk set to 0, from float32 input too."""
    from nilearn import signal

    from bids_vlm.design import cleaning

    rng = np.random.default_rng(3)
    n, v = 60, 2 * cleaning.CHUNK + 17
    data = rng.standard_normal((n, v)) * 5 + 100
    data[:, [3, cleaning.CHUNK + 1, v - 1]] = 7.0  # constant in the first, second, last chunk
    conf = rng.standard_normal((n, 4))
    for given in (data, data.astype(np.float32)):
        got = cleaning.clean_signals(given, 2.0, conf)
        x = np.asarray(given, np.float64)
        want = signal.clean(x, confounds=cleaning.nuisance_columns(n, 2.0, conf),
                            detrend=True, standardize="zscore_sample", filter=False, t_r=2.0)
        want[:, [3, cleaning.CHUNK + 1, v - 1]] = 0.0
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float32))
