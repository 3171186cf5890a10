"""Stage 4: activations -> HRF regressors (bids_vlm/design/regressors.py), checked against nilearn."""
import numpy as np
import pytest
from nilearn.glm.first_level import compute_regressor

from bids_vlm.design.regressors import (
    convolution_matrix,
    frame_times,
    make_regressors,
    sample_activations,
    zscore,
)

DT, N_SAMPLES, N_SCANS, TR = 0.5, 50, 20, 1.5


@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((N_SAMPLES, 3))
    a[rng.random(N_SAMPLES) < 0.3] = 0.0  # some blank samples
    return a


def _nilearn_per_an(acts, hrf_model):
    times = np.arange(N_SAMPLES) * DT
    cols = []
    for j in range(acts.shape[1]):
        condition = np.vstack([times, np.full(N_SAMPLES, DT), acts[:, j]])
        reg, _ = compute_regressor(condition, hrf_model, frame_times(N_SCANS, TR), oversampling=16)
        cols.append(reg[:, 0])
    return np.stack(cols, axis=1)


def test_frame_times():
    np.testing.assert_allclose(frame_times(4, 2.5), [0.0, 2.5, 5.0, 7.5])
    np.testing.assert_allclose(frame_times(4, 2.0, 0.9), [0.9, 2.9, 4.9, 6.9])
    # nilearn's FirstLevelModel: linspace(ref * tr, (n - 1 + ref) * tr, n), ref a fraction of TR
    np.testing.assert_allclose(frame_times(30, 2.5, 0.5 * 2.5),
                               np.linspace(0.5 * 2.5, (30 - 1 + 0.5) * 2.5, 30))


def test_slice_time_ref_moves_the_response_by_the_offset():
    """Frames that represent ``ref`` s after each volume onset see an event's response ``ref``
    s earlier (in frames) than frames at the onsets: sampling at the onsets would shift the
    regressors against the data."""
    event = np.array([[5.0], [1.0], [1.0]])
    fine_tr, ref = 0.1, 0.9  # a fine frame grid resolves the peak
    at_onsets, _ = compute_regressor(event, "spm", frame_times(400, fine_tr), oversampling=16)
    at_ref, _ = compute_regressor(event, "spm", frame_times(400, fine_tr, ref), oversampling=16)
    assert np.argmax(at_onsets) - np.argmax(at_ref) == round(ref / fine_tr)
    # at a real TR: the same as the event ``ref`` s earlier sampled at the onsets
    shifted, _ = compute_regressor(np.array([[5.0 - ref], [1.0], [1.0]]), "spm",
                                   frame_times(20, 2.0), oversampling=16)
    at_onsets, _ = compute_regressor(event, "spm", frame_times(20, 2.0), oversampling=16)
    at_ref, _ = compute_regressor(event, "spm", frame_times(20, 2.0, ref), oversampling=16)
    np.testing.assert_allclose(at_ref, shifted, atol=5e-3)
    assert np.abs(at_ref - at_onsets).max() > 0.04  # a visible shift, not rounding
    # convolution_matrix (the regressors of every AN) takes the same frames
    matrix = convolution_matrix([5.0], 1.0, frame_times(20, 2.0, ref))
    np.testing.assert_allclose(matrix[:, 0], at_ref[:, 0], atol=1e-10)


@pytest.mark.parametrize("hrf_model", ["spm", "glover"])
def test_matrix_equals_nilearn_per_an(acts, hrf_model):
    matrix = convolution_matrix(np.arange(N_SAMPLES) * DT, DT, frame_times(N_SCANS, TR),
                                hrf_model=hrf_model)
    assert matrix.shape == (N_SCANS, N_SAMPLES)
    expected = _nilearn_per_an(acts, hrf_model)
    assert np.abs(expected).max() > 0.1  # a real response, not all zeros
    np.testing.assert_allclose(matrix @ acts, expected, rtol=0, atol=1e-10)
    reg = make_regressors(matrix, acts)
    assert reg.dtype == np.float32 and reg.shape == (N_SCANS, 3)
    z = (expected - expected.mean(0)) / expected.std(0)
    np.testing.assert_allclose(reg, z, atol=1e-5)


def test_regressors_are_zscored_and_constant_columns_zero(acts):
    matrix = convolution_matrix(np.arange(N_SAMPLES) * DT, DT, frame_times(N_SCANS, TR))
    a = np.concatenate([acts, np.zeros((N_SAMPLES, 1))], axis=1)  # an AN that never fires
    reg = make_regressors(matrix, a).astype(np.float64)
    np.testing.assert_allclose(reg[:, :3].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(reg[:, :3].std(0), 1, atol=1e-6)
    assert np.all(reg[:, 3] == 0)


def test_zscore_constant_and_values():
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    z = zscore(x)
    np.testing.assert_allclose(z[:, 0], np.array([-1, 0, 1]) / np.sqrt(2 / 3))
    np.testing.assert_array_equal(z[:, 1], 0.0)


def test_sample_activations():
    table = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    index = {"a": 0, "b": 1, "c": 2}
    out = sample_activations(["c", None, "a", "c", None], table, index)
    expected = np.array([[5, 6], [0, 0], [1, 2], [5, 6], [0, 0]], dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(sample_activations([None, None], table, index), np.zeros((2, 2)))


def test_bad_hrf_model():
    with pytest.raises(ValueError, match="hrf_model"):
        convolution_matrix([0.0], 1.0, frame_times(5, 2.0), hrf_model="fir")


def test_empty_timeline_gives_empty_matrix():
    assert convolution_matrix([], 1.0, frame_times(5, 2.0)).shape == (5, 0)


def test_fir_matrices_match_nilearn_and_feed_association_and_encoding():
    from nilearn.glm.first_level import compute_regressor

    from bids_vlm.design.regressors import make_delayed_regressors

    frames = frame_times(60, 2.0)
    times = np.arange(120) * 1.0
    mats = convolution_matrix(times, 1.0, frames, "fir", fir_delays=(1, 2, 3))
    assert mats.shape == (3, 60, 120)
    acts = np.random.default_rng(0).standard_normal((120, 2))
    ref, _ = compute_regressor(np.vstack([times, np.ones(120), acts[:, 1]]), "fir", frames,
                               oversampling=16, fir_delays=[1, 2, 3])
    np.testing.assert_allclose(np.stack([m @ acts[:, 1] for m in mats], axis=1), ref,
                               atol=1e-10)
    single = make_regressors(mats, acts)  # association: the mean of the delayed responses
    np.testing.assert_allclose(single, zscore(mats.mean(0) @ acts), atol=1e-5)
    delayed = make_delayed_regressors(mats, acts)
    assert delayed.shape == (60, 6)
    np.testing.assert_allclose(delayed[:, 2:4], zscore(mats[1] @ acts), atol=1e-5)
    with pytest.raises(ValueError, match="fir_delays"):
        convolution_matrix(times, 1.0, frames, "fir")
