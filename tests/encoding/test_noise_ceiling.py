"""Noise ceiling from repeated runs: the analytic ceiling on simulated repeats, what a perfect
model reaches on a held-out run, repeat detection from the regressors, no repeats -> None."""
from __future__ import annotations

import numpy as np
import pytest

from bids_vlm.encoding.noise_ceiling import fraction_of_ceiling, noise_ceiling, repeated_runs


def _repeats(rng, n_runs, length=300, n_vox=400, signal_sd=None, noise_sd=1.0):
    """n_runs of the same signal (length, V) with signal sd per voxel, independent noise."""
    signal_sd = np.linspace(0.0, 2.0, n_vox) if signal_sd is None else signal_sd
    signal = rng.standard_normal((length, n_vox))
    signal = (signal - signal.mean(0)) / signal.std(0) * signal_sd
    runs = [signal + noise_sd * rng.standard_normal((length, n_vox)) for _ in range(n_runs)]
    return signal, runs, signal_sd / np.sqrt(signal_sd ** 2 + noise_sd ** 2)


@pytest.mark.parametrize("n_runs", [2, 4])
def test_ceiling_matches_the_analytic_value(n_runs):
    rng = np.random.default_rng(n_runs)
    _, runs, expected = _repeats(rng, n_runs)
    nc = noise_ceiling(np.concatenate(runs), [300] * n_runs, [tuple(range(n_runs))])
    assert np.abs(nc.r ** 2 - expected ** 2).max() < 0.2  # R^2 ceiling, all voxels
    assert np.abs(nc.r ** 2 - expected ** 2).mean() < 0.03
    clear = expected > 0.7  # sqrt amplifies the noise of small variances: r where it is clear
    assert np.abs(nc.r - expected)[clear].max() < 0.1
    assert np.abs(nc.r - expected).mean() < 0.05
    np.testing.assert_allclose(np.median(nc.ncsnr[200:] / np.linspace(0, 2, 400)[200:]), 1.0,
                               atol=0.05)
    assert nc.r[0] < 0.2 and nc.r[-1] > 0.85  # no signal -> about 0; sd 2 vs 1 -> 0.89


def test_a_perfect_model_reaches_the_ceiling_on_a_held_out_run():
    rng = np.random.default_rng(7)
    signal, runs, _ = _repeats(rng, 3)
    nc = noise_ceiling(np.concatenate(runs[:2]), [300, 300], [(0, 1)])
    held_out = runs[2]
    r = np.array([np.corrcoef(signal[:, v], held_out[:, v])[0, 1] for v in range(1, 400)])
    assert np.abs(r - nc.r[1:]).mean() < 0.05
    fraction = fraction_of_ceiling(r, nc.r[1:], minimum=0.3)
    assert abs(np.nanmedian(fraction) - 1.0) < 0.05
    assert np.isnan(fraction_of_ceiling([0.1], [0.0])[0])


def test_groups_of_repeats_are_pooled_and_other_runs_ignored():
    rng = np.random.default_rng(3)
    sd = np.full(200, 1.0)
    _, a, expected = _repeats(rng, 2, length=200, n_vox=200, signal_sd=sd)
    _, b, _ = _repeats(rng, 2, length=150, n_vox=200, signal_sd=sd)
    other = rng.standard_normal((100, 200)) * 5.0  # a run without repeat: not used
    voxels = np.concatenate([a[0], b[0], other, a[1], b[1]])
    nc = noise_ceiling(voxels, [200, 150, 100, 200, 150], [(0, 3), (1, 4)])
    assert abs(nc.r.mean() - expected[0]) < 0.03  # sqrt(1/2) = 0.71
    assert nc.groups == ((0, 3), (1, 4))
    # voxels a few at a time (a chunk that does not divide V): the same values
    chunked = noise_ceiling(voxels, [200, 150, 100, 200, 150], [(0, 3), (1, 4)], chunk=7)
    np.testing.assert_array_equal(chunked.r, nc.r)
    np.testing.assert_array_equal(chunked.ncsnr, nc.ncsnr)
    assert chunked.groups == nc.groups


def test_ceiling_memory_does_not_grow_with_the_brain():
    """A whole brain's ceiling holds a chunk's float64 stacks, not the BOLD's (12 runs of 50
    frames x 20,000 voxels: 46 MiB float32 in, 92 MiB per float64 stack)."""
    import tracemalloc

    rng = np.random.default_rng(4)
    voxels = rng.standard_normal((600, 20000), dtype=np.float32)
    tracemalloc.start()
    try:
        nc = noise_ceiling(voxels, [50] * 12, [tuple(range(12))], chunk=512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert nc.r.shape == (20000,) and np.median(nc.r) < 0.2  # no signal repeats


def test_repeats_are_found_from_identical_regressors():
    rng = np.random.default_rng(1)
    seq_a, seq_b = rng.standard_normal((50, 8)), rng.standard_normal((50, 8))
    regressors = np.concatenate([seq_a, seq_b, seq_a, rng.standard_normal((40, 8)), seq_a])
    assert repeated_runs(regressors, [50, 50, 50, 40, 50]) == [(0, 2, 4)]
    assert repeated_runs(regressors[:140], [50, 50, 40]) == []


def test_no_repeats_no_ceiling():
    rng = np.random.default_rng(2)
    assert noise_ceiling(rng.standard_normal((100, 5)), [50, 50], []) is None
    assert noise_ceiling(rng.standard_normal((100, 5)), [50, 50], [(0,)]) is None
    with pytest.raises(ValueError, match="length"):
        noise_ceiling(rng.standard_normal((90, 5)), [50, 40], [(0, 1)])


def test_ceiling_from_regressors_logs_why_without_repeats(caplog):
    from bids_vlm.encoding.noise_ceiling import ceiling_from_regressors

    rng = np.random.default_rng(4)
    layers = [rng.standard_normal((100, 3)), rng.standard_normal((100, 2))]
    with caplog.at_level("INFO", logger="bids_vlm"):
        assert ceiling_from_regressors(layers, rng.standard_normal((100, 6)), [50, 50]) is None
    assert "no two runs show the same stimulus sequence" in caplog.text
    layers[1][50:] = layers[1][:50]  # one layer repeats, the other does not: no repeat
    assert ceiling_from_regressors(layers, rng.standard_normal((100, 6)), [50, 50]) is None
    layers[0][50:] = layers[0][:50]
    nc = ceiling_from_regressors(layers, rng.standard_normal((100, 6)), [50, 50])
    assert nc.groups == ((0, 1),) and nc.r.shape == (6,)


def test_repeats_from_stimulus_sequence_signatures(caplog):
    """The pipeline finds repeats from each run's timeline signature, since its regressors are
    cleaned with run-specific confounds and are no longer identical across repeats."""
    import logging

    from bids_vlm.encoding.noise_ceiling import ceiling_from_signatures, repeated_signatures

    assert repeated_signatures(["a", "b", "a", "c", "a"]) == [(0, 2, 4)]
    assert repeated_signatures(["a", "b"]) == []
    rng = np.random.default_rng(3)
    with caplog.at_level(logging.INFO, logger="bids_vlm"):
        assert ceiling_from_signatures(["a", "b"], rng.standard_normal((100, 4)), [50, 50]) is None
    assert "no two runs show the same stimulus sequence" in caplog.text
    signal = rng.standard_normal((50, 4))
    voxels = np.concatenate([signal + 0.5 * rng.standard_normal((50, 4)) for _ in range(3)])
    got = ceiling_from_signatures(["x", "x", "x"], voxels, [50, 50, 50])
    assert got.groups == ((0, 1, 2),) and (got.r > 0.7).all()  # analytic 0.894


@pytest.mark.parametrize("n_subjects", [3, 6])
def test_intersubject_ceiling_matches_the_analytic_value(n_subjects):
    """Subjects = shared signal + independent noise, each with its own offset and BOLD scale:
    the across-subjects ceiling is sqrt(s_s^2 / (s_s^2 + s_n^2)); pure-noise voxels about 0."""
    from bids_vlm.encoding.noise_ceiling import intersubject_ceiling

    rng = np.random.default_rng(10 + n_subjects)
    n_vox, runs = 400, [250, 200]
    signal_sd = np.linspace(0.0, 2.0, n_vox)
    signal_sd[:50] = 0.0  # pure noise
    signal = rng.standard_normal((sum(runs), n_vox)) * signal_sd
    subjects = [(signal + rng.standard_normal(signal.shape) + rng.normal(0, 5, n_vox))
                * rng.uniform(0.5, 3.0) for _ in range(n_subjects)]
    expected = signal_sd / np.sqrt(signal_sd ** 2 + 1.0)
    nc = intersubject_ceiling(subjects, runs)
    assert nc.r.shape == (n_vox,) and nc.groups == (tuple(range(n_subjects)),) * 2
    clear = expected > 0.7
    assert np.abs(nc.r - expected)[clear].max() < 0.08
    assert np.abs(nc.r - expected).mean() < 0.05
    assert np.abs(nc.r ** 2 - expected ** 2).max() < 0.15
    assert np.median(nc.r[:50]) < 0.15 and nc.r[:50].max() < 0.35
    np.testing.assert_allclose(nc.r, nc.ncsnr / np.sqrt(nc.ncsnr ** 2 + 1), atol=1e-5)
    # a (n_subjects, T, V) stack gives the same; the ceiling does not depend on run splits
    # of a stationary signal by much
    np.testing.assert_allclose(intersubject_ceiling(np.stack(subjects), runs).r, nc.r)
    np.testing.assert_array_equal(intersubject_ceiling(subjects, runs, chunk=33).r, nc.r)
    assert np.abs(intersubject_ceiling(subjects).r - nc.r).mean() < 0.02


def test_streamed_shared_ceiling_equals_its_definition():
    """SharedCeiling, fed a subject's run at a time, equals the formula on the stacked
    z-scored runs (pooled_ceiling: the variance over subjects, the variance of their mean);
    a voxel constant in one subject counts as 0 there; misuse is an error."""
    from bids_vlm.encoding.noise_ceiling import (SharedCeiling, intersubject_ceiling,
                                                 pooled_ceiling)

    rng = np.random.default_rng(8)
    runs = [60, 45]
    shared_signal = rng.standard_normal((105, 30)) * np.linspace(0, 2, 30)
    subjects = [(shared_signal + rng.standard_normal((105, 30))) * rng.uniform(0.5, 4, 30)
                + 7.0 for _ in range(5)]
    subjects[3][:, 0] = 4.0  # constant: z = 0
    bounds = np.cumsum([0, *runs])

    def z(a):
        a = a - a.mean(0)
        sd = a.std(0)
        return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)

    expected = pooled_ceiling([np.stack([z(s[b0:b1]) for s in subjects])
                               for b0, b1 in zip(bounds[:-1], bounds[1:])])
    shared = SharedCeiling(30, chunk=7)
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        for s in subjects:
            shared.add(s[b0:b1].astype(np.float32))
        shared.end_run()
    got = shared.result()
    np.testing.assert_allclose(got.r, expected.r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.ncsnr, expected.ncsnr, rtol=1e-5, atol=1e-6)
    assert got.groups == ((0, 1, 2, 3, 4),) * 2 and got.r.max() > 0.5
    # subjects that agree exactly (up to scale): no noise, a ceiling of 1, not NaN
    same = intersubject_ceiling([subjects[0] * k for k in (1.0, 2.0, 0.5)], runs)
    assert np.allclose(same.r, 1.0) and (same.ncsnr > 1e6).all()  # or inf
    with pytest.raises(ValueError, match="expected"):
        SharedCeiling(30).add(np.zeros((10, 29)))
    bad = SharedCeiling(30)
    bad.add(np.zeros((10, 30)))
    with pytest.raises(ValueError, match="expected"):
        bad.add(np.zeros((11, 30)))
    with pytest.raises(ValueError, match=">= 2 subjects"):
        bad.end_run()
    with pytest.raises(ValueError, match="not ended"):
        bad.result()


def test_intersubject_ceiling_needs_three_matching_subjects():
    from bids_vlm.encoding.noise_ceiling import intersubject_ceiling

    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match=">= 3 subjects"):
        intersubject_ceiling([rng.standard_normal((40, 3))] * 2)
    with pytest.raises(ValueError, match="differ in shape"):
        intersubject_ceiling([rng.standard_normal((40, 3))] * 2 + [rng.standard_normal((30, 3))])
    with pytest.raises(ValueError, match="run lengths"):
        intersubject_ceiling([rng.standard_normal((40, 3))] * 3, [20, 10])


def test_run_signature_is_the_hash_of_timeline_scans_and_tr():
    from bids_vlm.inputs.stimuli import run_signature

    timeline = {"times": [0.0, 1.0], "items": ["a.png", "b.png"]}
    assert run_signature(timeline, 100, 2.0) == run_signature(dict(timeline), 100, 2.0)
    assert run_signature(timeline, 100, 2.0) != run_signature(timeline, 101, 2.0)
    assert run_signature(timeline, 100, 2.0) != run_signature(
        {"times": [0.0, 1.0], "items": ["b.png", "a.png"]}, 100, 2.0)
