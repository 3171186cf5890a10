"""The association of every layer of one model with the voxels of an analysis unit, streamed
layer by layer into one HDF5 file (the association stage)."""
from __future__ import annotations

import h5py

from bids_vlm.design.cleaned_runs import load_cleaned, pooled_noise_sums
from bids_vlm.errors import ResourceError
from bids_vlm.models.base import resolve_device
from bids_vlm.stats.association import block_size_for_memory, method_description, prepare_voxels
from bids_vlm.stats.bnstore import ENTRY_FIELDS, pack, write_layer
from bids_vlm.stats.entries import EntryBuffers
from bids_vlm.stats.unique import layer_association, mean_abs_r


def block_for_memory(mem_gb: float, block_size: int, x_shape, prepared, bn_definition: str,
                     device) -> int:
    """ANs per block: ``block_size``, or with ``mem_gb`` > 0 the largest block whose working
    memory fits (:func:`~bids_vlm.stats.association.block_size_for_memory`; the unique BNs'
    residualised voxel copy counts against it). ResourceError (exit 69) when even one AN
    does not fit. x_shape: the layer's regressors (T, N); prepared: the prepared voxels."""
    if not mem_gb:
        return block_size
    spare = prepared.y.numel() * 4 if bn_definition == "unique" else 0
    try:
        return block_size_for_memory(int(mem_gb * 2**30) - spare, x_shape[0], x_shape[1],
                                     prepared.n_vox, device=device)
    except MemoryError as exc:
        raise ResourceError(str(exc)) from exc


def associate_layers(regressors_file, cleaned_files, config, execution, path) -> str:
    """AN x voxel association of every layer of ``regressors_file`` (the regressors stage's)
    with the runs' cleaned BOLD -> ``path`` (HDF5, a group per layer: per AN and per voxel
    summaries, and the BN entries in the compact form of :mod:`bids_vlm.stats.bnstore`), on
    the device and in the blocks of ``execution``."""
    voxels = load_cleaned(cleaned_files)
    device = resolve_device(execution.device)
    stats = config.stats
    with h5py.File(regressors_file, "r") as regs, h5py.File(path, "w") as out:
        out.attrs["model"] = regs.attrs["model"]
        out.attrs["n_layers"] = regs.attrs.get("n_layers", "{}")
        out.attrs["method"] = method_description(stats.autocorr, stats.n_lags or None,
                                                 stats.fdr_scope, stats.bn_definition,
                                                 stats.nuisance_pcs)
        out.attrs["fdr_q"] = stats.fdr_q
        run_lengths = [int(n) for n in regs.attrs["run_lengths"]]
        common = dict(run_lengths=run_lengths, autocorr=stats.autocorr,
                      n_lags=stats.n_lags or None, n_removed=int(regs.attrs.get("n_removed", 0)))
        noise = dict(noise_sums=pooled_noise_sums(cleaned_files),
                     lag_traces=regs.attrs["lag_traces"]) if stats.autocorr == "exact" else {}
        prepared = prepare_voxels(voxels, device=str(device), **common, **noise)  # all layers
        del voxels  # the prepared copy is all the layers need
        entries = EntryBuffers()  # the significant entries' arrays, reused by every layer
        projected = {}  # the voxels with a layer's nuisance basis projected out, likewise
        for stream in (s for s in regs if s not in ("delayed", "nuisance")):
            presence = regs.get(f"nuisance/presence/{stream}")
            presence = None if presence is None else presence[()]
            for layer in regs[stream]:
                key = f"{stream}/{layer}"
                x = regs[key][()]
                out[f"{key}/mean_abs_r"] = mean_abs_r(x, seed=config.model.seed)
                block = block_for_memory(execution.mem_gb, execution.block_size, x.shape,
                                         prepared, stats.bn_definition, device)
                res, share = layer_association(
                    x, prepared, presence, stats.bn_definition, stats.nuisance_pcs, **noise,
                    q=stats.fdr_q, block_size=block, device=str(device), progress=True,
                    desc=f"association {key}", fdr_scope=stats.fdr_scope, entries=entries,
                    scratch=projected, **common)
                if share is not None:
                    out[f"{key}/removed_share"] = share
                for field, value in vars(res).items():  # per AN and per voxel
                    if field != "n_frames" and field not in ENTRY_FIELDS:
                        out[f"{key}/{field}"] = value
                # the entries in the compact form: BNs with the sign of r, and r, z, p of
                # each AN's top --keep-entries voxels (bids_vlm.stats.bnstore; p from z)
                write_layer(out[key], pack(res.an_index, res.voxel_index, res.r, res.z, None,
                                           len(res.n_pos), stats.keep_entries))
                out[key].attrs["n_frames"] = res.n_frames
                del res
    return str(path)
