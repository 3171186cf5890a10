"""Stage 9: the participant and group HTML reports (bids_vlm/reports/)."""
from __future__ import annotations

import html
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from bids_vlm import __version__
from bids_vlm.config import AnalysisConfig, StatsConfig, StimulusConfig, from_dict
from bids_vlm.reports.group import group_report
from bids_vlm.reports import participant
from bids_vlm.reports.participant import participant_report
from bids_vlm.reports.sections import CITATIONS, methods_text

SRC_RE = re.compile(r"""src=(?:'([^']*)'|"([^"]*)")""")


def _sources(page: str) -> list[str]:
    return [html.unescape(a or b) for a, b in SRC_RE.findall(page)]


def _config_of(out: Path, level: str) -> AnalysisConfig:
    """The configuration the CLI ran with, from its TOML log."""
    logs = sorted((out / "logs").glob(f"config_{level}_*.toml"))
    assert logs, f"no {level} configuration in {out / 'logs'}"
    data = tomllib.loads(logs[-1].read_text())
    data.pop("bids_vlm")
    data.pop("execution")  # how the run executed: not part of the analysis configuration
    return from_dict(data)


def _check_figures(page: str, out: Path, figdir: Path, n_min: int):
    sources = _sources(page)
    assert len(sources) >= n_min
    assert len(set(sources)) == len(sources)
    for src in sources:
        assert not Path(src).is_absolute() and ".." not in Path(src).parts
        path = out / src
        assert path.is_file(), f"{src} is referenced but does not exist"
        assert path.parent == figdir
        with Image.open(path) as img:
            assert img.format == "PNG"
            img.verify()
        with Image.open(path) as img:
            assert img.width > 50 and img.height > 50
    # every figure in the folder is referenced (no stale figures)
    assert {p.name for p in figdir.glob("*.png")} == {Path(s).name for s in sources}
    return sources


def _check_methods_and_citations(page, config, sidecar):
    assert "<h2>Methods</h2>" in page
    assert html.escape(methods_text(config, sidecar)) in page
    for citation in CITATIONS:
        assert html.escape(citation) in page
    assert page.count("<li>") == len(CITATIONS)


@pytest.mark.parametrize("sub", ["01", "02"])
def test_participant_report_figures_methods_citations(planted_outputs, sub):
    out = planted_outputs["out"]
    page = (out / f"sub-{sub}.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert f"<title>bids_vlm report: sub-{sub}</title>" in page
    sources = _check_figures(page, out, out / f"sub-{sub}" / "figures", n_min=3)
    stem = f"sub-{sub}_task-view_space-MNI152NLin2009cAsym_desc-tinyclip"
    assert sorted(Path(s).name for s in sources) == sorted(
        [f"{stem}_layerprofile.png", f"{stem}_stream-image_bncount.png",
         f"{stem}_stream-text_bncount.png", f"{stem}_encodingprofile.png",
         f"{stem}_stream-image_preferredlayer.png", f"{stem}_stream-text_preferredlayer.png",
         f"{stem}_stream-image_encodingr.png", f"{stem}_stream-text_encodingr.png",
         f"{stem}_networkprofile.png", f"{stem}_polarity.png", f"{stem}_jaccard.png"])
    table = next((out / f"sub-{sub}" / "func").glob("*_desc-tinyclip_neurons.tsv"))
    sidecar = json.loads(table.with_suffix(".json").read_text())
    assert sidecar["Model"] == "tiny-clip"
    _check_methods_and_citations(page, _config_of(out, "participant"), sidecar)
    assert f"<h2>{stem}</h2>" in page
    assert "Model <b>tiny-clip</b>; space: MNI152NLin2009cAsym; 2048 ANs" in page
    assert "No results" not in page
    assert f"<tr><th>bids_vlm version</th><td>{__version__}</td></tr>" in page


def test_group_report_figures_methods_citations(planted_outputs):
    out = planted_outputs["out"]
    page = (out / "group.html").read_text(encoding="utf-8")
    assert "<title>bids_vlm report: group</title>" in page
    sources = _check_figures(page, out, out / "group" / "figures", n_min=3)
    stem = "group_task-view_space-MNI152NLin2009cAsym_desc-tinyclip"
    assert sorted(Path(s).name for s in sources) == sorted(
        [f"{stem}_layerprofile.png", f"{stem}_stream-image_meanbncount.png",
         f"{stem}_stream-text_meanbncount.png", f"{stem}_polarity.png", f"{stem}_jaccard.png",
         f"{stem}_stream-image_meanencodingr.png", f"{stem}_stream-text_meanencodingr.png",
         f"{stem}_networkprofile.png"])
    assert "2 participant(s): 01, 02." in page
    assert "<h3>Polarity</h3>" in page and "<h3>Networks</h3>" in page
    assert re.search(r"image: sub-01 r=-?\d\.\d\d, sub-02 r=-?\d\.\d\d", page)
    assert '<table class="dataframe drivers">' in page
    assert page.count("<td>Visual</td>") == 2  # the drivers table: one row per stream
    text00 = out / "group" / f"{stem}Text00_stat-meanbncount_statmap.json"
    _check_methods_and_citations(page, _config_of(out, "group"), json.loads(text00.read_text()))
    assert "No group results" not in page and "BOLD input: n/a" not in page


def test_group_methods_name_the_association_method(planted_outputs):
    page = (planted_outputs["out"] / "group.html").read_text(encoding="utf-8")
    assert "Association: ," not in page
    assert "Pearson r between each AN regressor and each voxel" in page


def test_participant_report_without_results(tmp_path):
    config = AnalysisConfig()
    path = participant_report(tmp_path, "07", config)
    assert path == tmp_path / "sub-07.html"
    page = path.read_text(encoding="utf-8")
    assert "No results were found for this participant." in page
    assert "<title>bids_vlm report: sub-07</title>" in page
    assert "<tr><th>Participant</th><td>sub-07</td></tr>" in page
    assert "<img" not in page
    assert (tmp_path / "sub-07" / "figures").is_dir()
    assert list((tmp_path / "sub-07" / "figures").iterdir()) == []
    _check_methods_and_citations(page, config, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-07", "sub-07.html"]  # no temp files


def test_group_report_without_results(tmp_path):
    page = group_report(tmp_path, AnalysisConfig()).read_text(encoding="utf-8")
    assert "<p>No group results.</p>" in page and "<img" not in page
    _check_methods_and_citations(page, AnalysisConfig(), {})


def test_methods_text_mentions_hrf_q_and_sidecar():
    text = methods_text(AnalysisConfig(), {"BOLDInput": "raw BOLD (not motion-corrected)",
                                           "AssociationMethod": "Pearson r, BH-FDR"})
    assert "SPM haemodynamic response" in text
    assert "q = 0.05" in text
    assert "BOLD input: raw BOLD (not motion-corrected);" in text
    assert "Association: Pearson r, BH-FDR, q = 0.05." in text
    assert "passed through tiny-clip" in text and "mean-pooled" in text
    assert "sampled at 1 Hz" in text and "high-pass filtered at 0.007812 Hz" in text
    assert f"bids_vlm {__version__}" in text


def test_methods_text_follows_the_configuration():
    config = AnalysisConfig(stats=StatsConfig(hrf_model="glover", fdr_q=0.01),
                            stimuli=StimulusConfig(stim_rate=2.0))
    text = methods_text(config, {})
    assert "GLOVER haemodynamic response" in text and "SPM" not in text
    assert "q = 0.01" in text and "q = 0.05" not in text
    assert "sampled at 2 Hz" in text
    assert "BOLD input: n/a;" in text


def test_report_names_the_neurons_and_fdr_scope_it_ran_with(tmp_path):
    """--neurons attn and --fdr-scope all are what the methods and the summary say."""
    from bids_vlm.config import ModelConfig

    default = participant_report(tmp_path / "a", "01", AnalysisConfig()).read_text("utf-8")
    assert "post-nonlinearity units of every feed-forward block" in default
    assert "FDR level (ANs selected across the layer, then voxels within each)" in default
    config = AnalysisConfig(model=ModelConfig(an_kind="attn"),
                            stats=StatsConfig(fdr_scope="all"))
    page = participant_report(tmp_path / "b", "01", config).read_text("utf-8")
    assert "query x key products of every attention head dimension" in page
    assert "feed-forward" not in page and "per AN" not in page
    assert "FDR level (over all AN x voxel pairs of a layer)" in page


def test_report_escapes_html(tmp_path):
    config = AnalysisConfig(stats=StatsConfig(hrf_model="<script>"))
    page = participant_report(tmp_path, "01", config).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_each_model_section_draws_only_its_own_maps(planted_outputs, tmp_path, monkeypatch):
    """Two models in one unit: copy the tiny-clip outputs of sub-01 as a second model."""
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    shutil.copytree(planted_outputs["out"] / "sub-01" / "func", func,
                    ignore=shutil.ignore_patterns("*.h5", "*_stat-r_*"))
    for path in sorted(func.iterdir()):
        if "desc-tinyclip" not in path.name:
            continue
        twin = path.with_name(path.name.replace("desc-tinyclip", "desc-othermodel"))
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            data["Model"] = "other-model"
            twin.write_text(json.dumps(data))
        else:
            shutil.copy(path, twin)
    drawn = {}

    def fake_brain_figure(paths, fig_path, title, background, space, **kwargs):
        drawn[Path(fig_path).name] = [Path(p).name for p in paths]
        Image.new("RGB", (60, 60)).save(fig_path, format="PNG")

    monkeypatch.setattr(participant, "_brain_figure", fake_brain_figure)
    participant_report(out, "01", AnalysisConfig())
    drawn = {k: v for k, v in drawn.items() if k.endswith("_bncount.png")}
    assert len(drawn) == 4  # 2 models x 2 streams
    for fig, maps in drawn.items():
        model = "othermodel" if "desc-othermodel" in fig else "tinyclip"
        assert len(maps) == 4  # the 4 layers of one stream of one model
        assert all(f"_desc-{model}" in m for m in maps), (fig, maps)
