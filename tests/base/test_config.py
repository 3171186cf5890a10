"""Frozen configuration dataclasses and their JSON form (bids_vlm/config.py)."""
import dataclasses
import json

import pytest

from bids_vlm.config import (
    AnalysisConfig,
    BoldConfig,
    ModelConfig,
    RunFilter,
    StatsConfig,
    StimulusConfig,
    from_json,
    to_dict,
    to_json,
)


def _custom():
    return AnalysisConfig(
        filters=RunFilter(participant_label=("01", "02"), task=("movie",), run=(1, 3),
                          bids_filters='{"bold": {"echo": 1}}'),
        stimuli=StimulusConfig(stim_rate=0.5, text_template="a photo of a {trial_type}"),
        model=ModelConfig(models=("tiny-clip", "clip-vit-b-32"), layers=(0, 11), pooling="max",
                          seed=7),
        bold=BoldConfig(high_pass=1 / 100, smoothing_fwhm=6.0, confounds=("motion",),
                        n_acompcor=3),
        stats=StatsConfig(hrf_model="glover", fdr_q=0.01, keep_entries=20),
        derivatives=("/data/derivatives/fmriprep",))


@pytest.mark.parametrize("config", [AnalysisConfig(), _custom()])
def test_json_round_trip(config):
    back = from_json(to_json(config))
    assert back == config
    assert isinstance(back.model.models, tuple) and isinstance(back.derivatives, tuple)
    assert isinstance(back.bold.confounds, tuple) and isinstance(back.filters.run, tuple)


def test_to_json_is_plain_json():
    data = json.loads(to_json(_custom()))
    assert data == to_dict(_custom())
    assert data["model"]["layers"] == [0, 11]
    assert data["bold"]["high_pass"] == 0.01


def test_configs_are_frozen():
    config = _custom()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.derivatives = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.stats.fdr_q = 0.5
    assert config.stats.fdr_q == 0.01
