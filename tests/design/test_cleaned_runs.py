"""The clean stage's files read back (bids_vlm/design/cleaned_runs.py)."""
import numpy as np
import pytest


def test_load_cleaned_concatenates_the_runs_in_order(tmp_path):
    from bids_vlm.design.cleaned_runs import load_cleaned

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
    from bids_vlm.design.cleaned_runs import load_cleaned

    run = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a_cleaned.npy", run)
    real_load = np.load

    def no_mapping(*args, **kwargs):
        assert kwargs.get("mmap_mode") is None, "a cleaned run was memory-mapped"
        return real_load(*args, **kwargs)
    monkeypatch.setattr(np, "load", no_mapping)
    np.testing.assert_array_equal(load_cleaned([tmp_path / "a_cleaned.npy"] * 2),
                                  np.concatenate([run, run]))
