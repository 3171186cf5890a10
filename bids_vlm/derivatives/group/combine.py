"""Group level (docs/METHOD.md 9, first version): participants' per-layer maps and AN tables
combined.

For every (task, acquisition, space, model, stream, layer) map of the participants, the group
maps are: the mean number of ANs per voxel (``stat-meanbncount``), the
fraction of participants in which the voxel is a BN of at least one AN of the layer
(``stat-propbn``) and the mean of the participants' best r after Fisher z (``stat-meanr``).
Maps must share one grid (a template space); native-space maps of several participants cannot
be combined and give a clear error. With the participants' cleaned BOLD (``--save-cleaned``),
an across-subjects noise ceiling (:mod:`bids_vlm.derivatives.group.isc`).
"""
from __future__ import annotations

import re
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
from scipy import sparse

from bids_vlm.derivatives import write_json, write_tsv
from bids_vlm.derivatives.io import read_sidecar, save_image
from bids_vlm.names import parse_name
from bids_vlm.stats.bnstore import layer_size, layers, read_layer, read_range
from bids_vlm.errors import DataError
from bids_vlm.derivatives.group.architecture import combine_architecture
from bids_vlm.derivatives.group.hierarchy import combine_hierarchy
from bids_vlm.derivatives.group.isc import combine_isc
from bids_vlm.derivatives.group.summaries import combine_summaries
from bids_vlm.cifti import read_brain_models, read_dense, dscalar_image
from bids_vlm.analysis.group import group_maps

CONSISTENCY_ANS = 256  # ANs of a layer whose BN maps are compared at a time (bounds memory)






def collect_maps(output_dir) -> dict:
    """{(rest-of-name, desc, stat, extension): {subject: [paths, one per session]}} of the
    statmaps (``.nii.gz`` volumes, ``.dscalar.nii`` grayordinates)."""
    found = defaultdict(lambda: defaultdict(list))
    for path in sorted(p for ext in (".nii.gz", ".dscalar.nii")
                       for p in Path(output_dir).glob(f"sub-*/**/func/*_statmap{ext}")):
        name = parse_name(path.name)
        if name and name.get("sub") and name.get("desc") and name.get("stat"):
            key = (name.rest("sub", "ses", "desc", "stat"), name.get("desc"), name.get("stat"),
                   name.extension)
            found[key][name.get("sub")].append(path)
    return {k: dict(v) for k, v in found.items()}


def combine_participants(output_dir) -> list[Path]:
    """Write the group maps and tables under ``<output_dir>/group/``; returns the paths."""
    out = Path(output_dir) / "group"
    written = []
    for (rest, desc, stat, ext), by_subject in collect_maps(output_dir).items():
        paths = [p for ps in by_subject.values() for p in ps]
        read = _read_dense if ext == ".dscalar.nii" else _read_volumes
        stack, template = read(by_subject, paths)
        sidecar = read_sidecar(paths[0])
        for name, data in group_maps(stack, stat).items():
            path = out / f"group_{rest}_desc-{desc}_stat-{name}_statmap{ext}"
            side = {k: sidecar[k] for k in ("Model", "Stream", "Layer", "AssociationMethod",
                                            "FDRLevel", "HRFModel", "BOLDInput") if k in sidecar}
            side.update(Participants=sorted(by_subject), Statistic=name,
                        Description=_DESCRIPTIONS[name])
            save_image(path, _like(template, data, name))
            write_json(str(path)[:-len(ext)] + ".json", side)
            written.append(path)
    written += combine_neuron_tables(output_dir)
    written += combine_summaries(output_dir)
    written += combine_architecture(output_dir)
    written += combine_hierarchy(output_dir)
    written += combine_isc(output_dir)  # after the maps: it divides stat-meanencodingr by it
    return written


_DESCRIPTIONS = {
    "meanbncount": "mean over participants of the number of ANs of the layer with the voxel as BN",
    "propbn": "fraction of participants in which the voxel is a BN of at least one AN of the layer",
    "meanr": "mean over participants of the best r (Fisher z average, back-transformed)",
    "meanencodingr": "mean over participants of the layer's held-out encoding r (Fisher z)",
    "meanencodingr2": "mean over participants of the layer's held-out encoding R^2",
    "encodingt": "one-sample t (participants' Fisher-z held-out encoding r against 0)",
    "encodingq": "Benjamini-Hochberg q (across voxels) of the one-sided one-sample test that "
                 "the held-out encoding r is above 0",
}


def _read_volumes(by_subject: dict, paths: list):
    """(participants' maps (S, ...), the first image): a participant's sessions averaged
    first; DataError when the maps are on different grids."""
    imgs = {p: nib.load(p) for p in paths}
    _check_grid(list(imgs.values()), paths)
    stack = np.stack([np.mean([np.asarray(imgs[p].dataobj, dtype=np.float32) for p in ps],
                              axis=0) for ps in by_subject.values()])
    return stack, imgs[paths[0]]


_BRAIN_MODELS: dict = {}  # CIFTI XML -> its brain models, parsed once per group run


def _read_dense(by_subject: dict, paths: list):
    """:func:`_read_volumes` for grayordinate maps (S, K, G), their brain models; the maps
    must have the same brain models (compared as XML; parsed only when it differs)."""
    maps = {p: read_dense(p) for p in paths}
    first = _models_xml(maps[paths[0]][1])
    if first not in _BRAIN_MODELS:
        _BRAIN_MODELS.clear()
        _BRAIN_MODELS[first] = read_brain_models(paths[0])
    for path in paths[1:]:
        if _models_xml(maps[path][1]) != first and \
                read_brain_models(path) != _BRAIN_MODELS[first]:
            raise DataError("participants' maps are on different grayordinates (CIFTI brain "
                            "models); group analysis needs one density", path)
    stack = np.stack([np.mean([maps[p][0] for p in ps], axis=0) for ps in by_subject.values()])
    return stack, _BRAIN_MODELS[first]


def _models_xml(xml: bytes) -> bytes:
    """The CIFTI XML without its scalar map names (the brain models' part, for comparing)."""
    return re.sub(rb"<NamedMap>.*?</NamedMap>", b"", xml, flags=re.S)


def _like(template, data, name: str):
    """A group map's image on the grid of ``template`` (a NIfTI) or on its brain models."""
    if not isinstance(template, nib.Nifti1Image):
        data = np.asarray(data, np.float32).reshape(-1, len(template))
        names = [name] if len(data) == 1 else [f"{name}_{k}" for k in range(len(data))]
        return dscalar_image(data, names, template)
    return nib.Nifti1Image(np.asarray(data, np.float32), template.affine)


def _check_grid(imgs, paths):
    ref = imgs[0]
    for img, path in zip(imgs[1:], paths[1:]):
        if img.shape != ref.shape or not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise DataError(f"participants' maps are on different grids ({ref.shape} vs "
                            f"{img.shape}); group analysis needs data in one template space "
                            "(e.g. fMRIPrep's MNI152NLin2009cAsym outputs)", path)


def combine_neuron_tables(output_dir) -> list[Path]:
    """Per model: mean BN+ / BN- counts per AN over participants, and how many have any BN."""
    groups = defaultdict(list)
    for path in sorted(Path(output_dir).glob("sub-*/**/func/*_neurons.tsv")):
        name = parse_name(path.name)
        if name and name.get("sub") and name.get("desc"):
            groups[(name.rest("sub", "ses", "desc"), name.get("desc"))].append(
                (name.get("sub"), path))
    written = []
    for (rest, desc), items in groups.items():
        tables = [pd.read_csv(p, sep="\t") for _, p in items]
        stacked = pd.concat(tables, keys=[s for s, _ in items], names=["subject", "row"])
        # a participant's sessions are averaged first
        stacked = stacked.groupby(["subject", "an_id"], sort=False).agg(
            stream=("stream", "first"), layer=("layer", "first"), unit=("unit", "first"),
            n_bn_pos=("n_bn_pos", "mean"), n_bn_neg=("n_bn_neg", "mean")).reset_index()
        stacked["has_bn"] = (stacked.n_bn_pos + stacked.n_bn_neg) > 0
        summary = stacked.groupby("an_id", sort=False).agg(
            stream=("stream", "first"), layer=("layer", "first"), unit=("unit", "first"),
            mean_bn_pos=("n_bn_pos", "mean"), mean_bn_neg=("n_bn_neg", "mean"),
            n_participants_with_bn=("has_bn", "sum")).reset_index()
        first = {}  # one session per participant: consistency is between participants
        for sub_label, p in items:
            first.setdefault(sub_label, p.with_name(p.name.replace("_neurons.tsv",
                                                                   "_association.h5")))
        consistency = an_consistency([a for a in first.values() if a.is_file()])
        if consistency is not None:
            summary["consistency"] = summary["an_id"].map(consistency)
        path = Path(output_dir) / "group" / f"group_{rest}_desc-{desc}_neurons.tsv"
        written.append(write_tsv(path, summary))
        # an_id is <model>/<stream>/<layer>/<unit>, and a model spec may hold "/" (a path)
        model = tables[0]["an_id"].iloc[0].rsplit("/", 3)[0] if len(tables[0]) else ""
        written.append(write_json(path.with_suffix(".json"), {
            "Model": model, "Participants": sorted({s for s, _ in items}),
            "mean_bn_pos": {"Description": "mean BN+ count over participants"},
            "mean_bn_neg": {"Description": "mean BN- count over participants"},
            "n_participants_with_bn": {"Description": "participants where the AN has >= 1 BN"},
            "consistency": {"Description": "mean Jaccard overlap of the AN's BN maps between "
                                           "pairs of participants (on the common grid)"}}))
    return written


def _grid_index(h5) -> np.ndarray:
    """(V,) flat index in the grid of each voxel row of a participant's association.h5 (the
    grayordinate keys of :func:`bids_vlm.brainmask.row_keys` on CIFTI)."""
    if "grayordinate_key" in h5:
        return h5["grayordinate_key"][()]
    shape = tuple(int(s) for s in h5.attrs["grid_shape"])
    ijk = h5["voxel_ijk"][()]
    return np.ravel_multi_index(tuple(ijk.T), shape) if len(ijk) else np.zeros(0, int)


def _bn_blocks(h5) -> dict:
    """{layer key: (an_offset, n_ans)} of a participant's association.h5: its layer groups
    ("" for the whole file in the older flat layout)."""
    if "an_index" in h5:
        return {"": (0, len(h5["an_id"]))}
    return {group.name: (offset, layer_size(group)) for _, _, group, offset in layers(h5)}


def _bn_matrix(h5, key, flat, rows, n_columns: int) -> sparse.csr_matrix:
    """(k, grid voxels) BN membership of the ANs at positions ``rows`` (k,) of the layer
    ``key`` (:func:`_bn_blocks`) of a participant's association.h5; flat: :func:`_grid_index`.
    Consecutive rows are read as one slice of the layer (only their BNs)."""
    rows = np.asarray(rows, np.int64)
    if key == "":  # older flat layout: every entry at once
        an, vox = h5["an_index"][()].astype(np.int64), h5["voxel_index"][()].astype(np.int64)
    elif len(rows) and np.array_equal(rows, rows[0] + np.arange(len(rows))):
        an, vox, _ = read_range(h5[key], int(rows[0]), int(rows[0]) + len(rows)).entries()
        an = an + rows[0]
    else:  # ANs in another order than the first participant's
        an, vox = read_layer(h5[key]).rows(rows)
    order = np.argsort(rows, kind="stable")
    at = order[np.clip(np.searchsorted(rows[order], an), 0, max(len(rows) - 1, 0))]
    keep = rows[at] == an if len(rows) else np.zeros(len(an), bool)
    member = sparse.csr_matrix((np.ones(int(keep.sum())), (at[keep], flat[vox[keep]])),
                               shape=(len(rows), n_columns))
    member.data[:] = 1.0  # one entry per AN x voxel
    return member


def an_consistency(paths, chunk: int = CONSISTENCY_ANS) -> dict | None:
    """{an_id: mean pairwise Jaccard of its BN maps across participants} (ANs without BNs in
    both participants of a pair count 0 for it), or None with fewer than 2 participants.

    Reads ``chunk`` ANs of one layer of every participant at a time (the layers of the first
    participant; the others' ANs are matched by an_id within the layer), so memory holds the
    BNs of participants x ``chunk`` ANs."""
    if len(paths) < 2:
        return None
    out = {}
    with ExitStack() as stack:
        files = [stack.enter_context(h5py.File(p, "r")) for p in paths]
        flats = [_grid_index(h5) for h5 in files]
        places = np.unique(np.concatenate(flats))  # every participant's voxels, as columns
        flats = [np.searchsorted(places, f) for f in flats]
        ids = [h5["an_id"].asstr()[()] for h5 in files]
        blocks = [_bn_blocks(h5) for h5 in files]
        for key, (offset, n) in blocks[0].items():
            mine = list(ids[0][offset:offset + n])
            where = []  # per participant: positions of the first one's ANs in its layer
            for h5, other, block in zip(files, ids, blocks):
                if key not in block:
                    raise DataError(f"no {key or 'flat'} layer of BNs: participants' "
                                    "association files differ (rerun the participant level "
                                    "with one bids_vlm version and the same options)",
                                    h5.filename)
                start, count = block[key]
                theirs = list(other[start:start + count])
                index = {a: i for i, a in enumerate(theirs)} if theirs != mine else None
                where.append(np.arange(n) if index is None else
                             np.array([index[a] for a in mine], np.int64))
            step = n if key == "" else max(1, chunk)
            for lo in range(0, n, step):
                hi = min(n, lo + step)
                mats = [_bn_matrix(h5, key, flat, pos[lo:hi], len(places))
                        for h5, flat, pos in zip(files, flats, where)]
                total, pairs = np.zeros(hi - lo), 0
                for a in range(len(mats)):
                    for b in range(a + 1, len(mats)):
                        inter = np.asarray(mats[a].multiply(mats[b]).sum(1)).ravel()
                        union = (np.asarray(mats[a].sum(1)).ravel()
                                 + np.asarray(mats[b].sum(1)).ravel() - inter)
                        total += np.divide(inter, union, out=np.zeros(hi - lo), where=union > 0)
                        pairs += 1
                out.update(zip(mine[lo:hi], total / pairs))
    return out
