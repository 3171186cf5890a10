"""BIDS file names (bids_vlm/names.py): parsing what bids_name writes, lenient entity lookup
in any name, and the group level's grouping of the analysis units' tables."""
from __future__ import annotations

import pytest

from bids_vlm.names import (BIDSName, bids_name, entity, parse_name, unit_tables,
                            without_entity)


@pytest.mark.parametrize("entities, suffix, extension", [
    ({"sub": "01", "task": "movie", "desc": "clipvitb32Image07", "stat": "r"}, "statmap",
     ".nii.gz"),
    ({"sub": "01", "ses": "2", "task": "x", "acq": "hi", "run": 3, "space": "fsLR",
      "den": "91k", "desc": "cleaned"}, "bold", ".dtseries.nii"),
    ({"sub": "A1b", "task": "x", "desc": "tinyclip"}, "neurons", ".tsv"),
])
def test_parse_name_reads_back_what_bids_name_writes(entities, suffix, extension):
    name = parse_name(bids_name(entities, suffix, extension))
    assert name.entities == tuple((k, str(v)) for k, v in entities.items())
    assert (name.suffix, name.extension) == (suffix, extension)
    assert name.get("sub") == entities["sub"] and name.get("echo") is None


def test_rest_keeps_the_order_of_the_name():
    name = parse_name("sub-01_ses-2_task-x_acq-y_space-MNI152NLin2009cAsym_desc-d_stat-z_"
                      "statmap.dscalar.nii")
    assert name.rest("sub", "ses", "desc", "stat") == "task-x_acq-y_space-MNI152NLin2009cAsym"
    assert name.rest() == ("sub-01_ses-2_task-x_acq-y_space-MNI152NLin2009cAsym_desc-d_stat-z")


@pytest.mark.parametrize("bad", [
    "group_task-x_desc-y_neurons.tsv",  # a part that is not key-value
    "sub-01_sub-02_bold.nii.gz",  # a key twice
    "sub-01_task-a_b_bold.nii.gz",
    "sub-01_task-x_.tsv",  # no suffix
    "bold.nii.gz",  # no entity
    "sub-01_task-x y_bold.nii.gz",  # a value that is not alphanumeric
    "sub-01_task-x_desc-cleaned_bold-1.nii.gz",
])
def test_parse_name_refuses_other_names(bad):
    assert parse_name(bad) is None


def test_entity_and_without_entity_take_any_name():
    assert entity("group_task-x_space-MNI152NLin6Asym_desc-m_neurons", "space") == \
        "MNI152NLin6Asym"
    assert entity("myatlas_space-MNI152NLin6Asym.nii.gz", "space") == "MNI152NLin6Asym"
    assert entity("atlas.v2_space-T1w.nii.gz", "space") == "T1w"
    assert entity("sub-1_task-x_desc-y", "space") is None
    assert entity("sub-1_notspace-x", "space") is None
    assert without_entity("sub-1_task-x_desc-y", "desc") == "sub-1_task-x"
    assert without_entity("group_task-x_desc-y", "desc") == "group_task-x"
    assert without_entity("sub-1_task-x", "desc") == "sub-1_task-x"


def test_unit_tables_group_participants_and_sessions(tmp_path):
    """Per (entities but sub/ses/desc, desc): every participant's table, sessions apart; other
    suffixes, other folders and names outside the grammar are left out."""
    names = ["sub-01/func/sub-01_task-x_space-S_desc-m_neurons.tsv",
             "sub-02/ses-1/func/sub-02_ses-1_task-x_space-S_desc-m_neurons.tsv",
             "sub-02/ses-2/func/sub-02_ses-2_task-x_space-S_desc-m_neurons.tsv",
             "sub-01/func/sub-01_task-y_desc-m_neurons.tsv",
             "sub-01/func/sub-01_task-x_space-S_desc-m_networks.tsv",
             "sub-01/func/sub-01_task-x_odd_desc-m_neurons.tsv",
             "sub-01/anat/sub-01_task-x_space-S_desc-m_neurons.tsv"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = unit_tables(tmp_path, "neurons")
    assert {k: [(s, p.name) for s, p in v] for k, v in found.items()} == {
        ("task-x_space-S", "m"): [("01", "sub-01_task-x_space-S_desc-m_neurons.tsv"),
                                  ("02", "sub-02_ses-1_task-x_space-S_desc-m_neurons.tsv"),
                                  ("02", "sub-02_ses-2_task-x_space-S_desc-m_neurons.tsv")],
        ("task-y", "m"): [("01", "sub-01_task-y_desc-m_neurons.tsv")]}
    assert isinstance(parse_name("sub-01_bold.nii"), BIDSName)
