"""The clean stage's files read back: each run's cleaned series (``_cleaned.npy``, (n_scans, V))
and its noise lag sums (``_noise.npy``, (K + 1, V)), for the association, encoding, lesion and
enrichment stages."""
from __future__ import annotations

import numpy as np


def noise_path(cleaned_path) -> str:
    """Where a run's noise lag sums are kept: beside its cleaned series (``_noise.npy``)."""
    return str(cleaned_path).replace("_cleaned.npy", "_noise.npy")


def pooled_noise_sums(cleaned_files) -> np.ndarray:
    """(K + 1, V) the runs' noise lag sums (:func:`noise_path` of each cleaned file) summed
    over runs, K the smallest number of lags any run kept."""
    parts = [np.load(noise_path(f)) for f in cleaned_files]
    lags = min(p.shape[0] for p in parts)
    return sum(p[:lags].astype(np.float64) for p in parts)


def load_cleaned(cleaned_files) -> np.ndarray:
    """(sum n_scans, V): the runs' cleaned BOLD (the clean stage's ``_cleaned.npy`` files),
    concatenated in the order given: each file read straight into its rows (no run held
    twice; read, not memory-mapped, because a mapped file's pages count in the process's
    resident memory while it is copied: the BOLD twice over at load time)."""
    heads = [_npy_head(f) for f in cleaned_files]
    out = np.empty((sum(shape[0] for shape, _, _ in heads), *heads[0][0][1:]),
                   np.result_type(*(dtype for _, dtype, _ in heads)))
    start = 0
    for path, (shape, dtype, offset) in zip(cleaned_files, heads):
        if shape[1:] != out.shape[1:]:
            raise ValueError(f"cleaned runs of different widths: {shape[1:]} and "
                             f"{out.shape[1:]}")
        rows = out[start:start + shape[0]]
        if dtype == out.dtype and offset is not None:
            _read_into(path, offset, rows)
        else:  # another type or layout: converted as NumPy reads it
            rows[...] = np.load(path, mmap_mode="r")
        start += shape[0]
    return out


def _npy_head(path) -> tuple:
    """(shape, dtype, offset of the data or None when not C-ordered plain data) of a .npy
    file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        plain = not fortran and not dtype.hasobject and len(shape) >= 1
        return tuple(shape), dtype, f.tell() if plain else None


def _read_into(path, offset: int, out: np.ndarray) -> None:
    """The bytes of ``path`` from ``offset`` into the C-contiguous ``out``, all of them."""
    view, done = memoryview(out).cast("B"), 0  # raises unless out is C-contiguous
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{path}: the file ends before its {out.shape} array")
            done += n
