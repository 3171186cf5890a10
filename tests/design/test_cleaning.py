"""Stage 5: the cleaning of the BOLD and of the regressors (bids_vlm/design/cleaning.py)."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_vlm.config import BoldConfig
from bids_vlm.errors import DataError
from datagen import write_nifti
from bids_vlm.design.cleaning import MOTION, clean_bold, select_confounds

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
    return write_nifti(tmp_path / name, data4d, np.float32, affine)


def _mask(tmp_path, data3d, name="mask.nii.gz", affine=AFFINE):
    return write_nifti(tmp_path / name, data3d, np.uint8, affine)


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
