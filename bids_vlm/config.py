"""Configuration as small frozen dataclasses, passed explicitly to every stage.

The CLI resolves the options into an :class:`AnalysisConfig` (what changes the results) and an
:class:`Execution` (how the run executes: device, memory, block and batch sizes, processes).
The workflows hand the first to the nodes as JSON (:func:`to_json` / :func:`from_json`): it
enters the node caches and the finished participants' fingerprints, and ``logs/`` keeps it as
TOML. The second reaches the nodes that need it through a file whose path does not change
(:func:`write_execution` / :func:`read_execution`), so changing only how a run executes reuses
the cached results and leaves a finished participant finished.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from bids_vlm.atomic import atomic_path


@dataclass(frozen=True)
class RunFilter:
    """Which runs to analyse. Empty tuples mean "all"."""

    participant_label: tuple = ()
    session_label: tuple = ()
    task: tuple = ()
    run: tuple = ()
    bids_filters: str = "{}"  # PyBIDS filter file contents, JSON text


@dataclass(frozen=True)
class StimulusConfig:
    """How events become a stimulus timeline (docs/METHOD.md section 2)."""

    stim_rate: float = 1.0  # samples per second
    text_column: str = ""  # column holding text; "" = first of text, caption, sentence, word
    text_template: str = ""  # e.g. "a photo of a {trial_type}"; used when no text column
    text_window: float = 0.0  # > 0: a sample's text is every word of the last N seconds
    # columns naming the stimulus files (first non-empty value of a row wins); () = detect
    # (bids_vlm.inputs.stimulus_files.STIM_COLUMNS)
    stim_columns: tuple = ()
    stimuli_dir: str = ""  # absolute folder of the stimulus files; "" = <bids_dir>/stimuli
    media_time_column: str = ""  # seconds into the video at each onset (e.g. "videotime")
    exclude_trial_types: tuple = ()  # events of these trial types are left out (e.g. catch)


@dataclass(frozen=True)
class ModelConfig:
    """Which models and neurons to record (docs/METHOD.md section 3)."""

    models: tuple = ("tiny-clip",)
    streams: tuple = ()  # streams to record; () = every stream of each model
    layers: tuple = ()  # layer indices to keep; () = every layer
    pooling: str = "mean"
    an_kind: str = "ffn"  # "ffn" (feed-forward hidden units) or "attn" (q * k per head dim)
    precision: str = "fp32"  # fp32, or fp16 / bf16 autocast on CUDA
    model_dir: str = ""
    seed: int = 0
    image_size: int = 0  # METER: run at this resolution (resized position embedding); 0 = native


@dataclass(frozen=True)
class BoldConfig:
    """BOLD cleaning (docs/METHOD.md section 5)."""

    high_pass: float = 1.0 / 128  # Hz
    smoothing_fwhm: float = 0.0  # mm; 0 = none
    confounds: tuple = ("motion", "motion_derivatives", "acompcor", "cosine")
    n_acompcor: int = 6
    save_cleaned: bool = False  # also write each run's cleaned BOLD (for the group's ISC ceiling)


@dataclass(frozen=True)
class StatsConfig:
    """Regressors and AN-to-BN association (docs/METHOD.md sections 4 and 6)."""

    hrf_model: str = "spm"
    fir_delays: tuple = ()  # frames, for hrf_model "fir"
    oversampling: int = 16
    fdr_q: float = 0.05
    fdr_scope: str = "selective"  # two-stage: ANs (Simes, BH) then voxels within selected ANs;
    # "an": BH per AN over voxels; "all": one BH over all AN x voxel pairs of a layer
    autocorr: str = "exact"  # null variance of r: "exact" (noise before cleaning, given the
    # cleaning projection), "bartlett" (stationary, cleaned series) or "none" (independent)
    n_lags: int = 0  # autocorrelation lags for "exact" / "bartlett"; 0 = about 2 sqrt(run length)
    bn_definition: str = "unique"  # "unique": presence and the layer's top PCs removed from
    # both sides (partial r); "marginal": the paper's plain correlation
    nuisance_pcs: int = 3  # principal components of a layer's regressors removed ("unique")
    keep_entries: int = 100  # ANs' top voxels (by |z|) with exact r, z, p; 0 none, -1 all
    paper_mode: bool = False  # also run the dictionary-learning (atoms) analysis
    n_atoms: int = 64
    atom_alpha: float = 0.2


@dataclass(frozen=True)
class EncodingConfig:
    """Layer-wise ridge encoding (docs/METHOD.md section 7)."""

    enabled: bool = True
    alphas: tuple = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7)
    max_inner_folds: int = 5
    # "nested": each held-out run's alphas chosen by inner folds of the other runs; "shared":
    # once per layer by inner folds over every run (--alpha-cv; cheaper with many runs)
    alpha_cv: str = "nested"
    # layer indices the streams share that get a banded ridge model (>= 2 streams): "last",
    # "all", "none" or indices as strings (--banded-layers)
    banded_layers: tuple = ("last",)
    banded_iterations: int = 20  # random-search iterations over band weights


@dataclass(frozen=True)
class NetworkConfig:
    """Network atlases and the virtual lesion (docs/METHOD.md section 8)."""

    atlas: str = "yeo7"  # yeo7, yeo17, schaefer200, schaefer400 (+ language), or a NIfTI path
    atlas_digest: str = ""  # hash of a user atlas's files (a changed atlas reruns the nodes)
    lesion_steps: tuple = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5)  # shares of a layer's ANs; () = off
    # enrichment p of "drives" from a spatial null (random rigid moves of the atlas, which keep
    # the BN maps' spatial autocorrelation): surrogates per AN x network; 0 = off (the
    # hypergeometric p, which assumes independent voxels, decides "drives")
    n_surrogates: int = 1000
    max_surrogates: int = 10000  # pairs at the floor p 1/(1 + n) that BH does not reject get
    # more surrogates (x10 per round) up to this many; <= n_surrogates: no refinement
    seed: int = 0  # of the spatial null's random moves


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything that determines a participant's results."""

    filters: RunFilter = field(default_factory=RunFilter)
    stimuli: StimulusConfig = field(default_factory=StimulusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bold: BoldConfig = field(default_factory=BoldConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    networks: NetworkConfig = field(default_factory=NetworkConfig)
    derivatives: tuple = ()  # paths to preprocessed-derivative datasets (e.g. fMRIPrep)
    sessions: str = "pooled"  # a task's runs of all sessions in one unit, or "separate"
    fingerprint: str = ""  # of the input files of an analysis unit (a change reruns its nodes)


_SECTIONS = {
    "filters": RunFilter,
    "stimuli": StimulusConfig,
    "model": ModelConfig,
    "bold": BoldConfig,
    "stats": StatsConfig,
    "encoding": EncodingConfig,
    "networks": NetworkConfig,
}


def to_dict(config: AnalysisConfig) -> dict:
    """Plain nested dict (tuples become lists), for JSON and TOML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def to_json(config: AnalysisConfig) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


def from_dict(data: dict) -> AnalysisConfig:
    kwargs = {}
    for key, value in data.items():
        if key in _SECTIONS:
            kwargs[key] = _SECTIONS[key](**{k: _tuple(v) for k, v in value.items()})
        else:
            kwargs[key] = _tuple(value)
    return AnalysisConfig(**kwargs)


def from_json(text: str) -> AnalysisConfig:
    return from_dict(json.loads(text))


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Execution:
    """How a run executes, never what it computes: not in the node caches nor fingerprints.

    device: "auto", "cpu" or "cuda" for the model, the association, the encoding and the
    lesion; batch_size: stimuli per forward pass; block_size: ANs per block of the streamed
    association; mem_gb: memory for the association (> 0 sets the block size from it);
    nprocs, plugin, plugin_args (JSON), omp_nthreads (0: the libraries' default),
    stop_on_first_crash: how Nipype runs the graph.
    """

    device: str = "auto"
    batch_size: int = 16
    block_size: int = 256
    mem_gb: float = 0.0
    nprocs: int = 1
    plugin: str = ""  # "" = Linear for 1 process, MultiProc for more
    plugin_args: str = "{}"  # JSON, passed to the Nipype plugin
    omp_nthreads: int = 0  # threads per process for torch / BLAS; 0 = library default
    stop_on_first_crash: bool = True

    def plugin_and_args(self) -> tuple[str, dict]:
        args = json.loads(self.plugin_args or "{}")
        plugin = self.plugin or ("MultiProc" if self.nprocs > 1 else "Linear")
        if plugin == "MultiProc":
            args.setdefault("n_procs", self.nprocs)
        return plugin, args


EXECUTION_FILE = "execution.json"


def write_execution(folder, execution: Execution) -> Path:
    """Write ``execution`` as JSON to ``folder``/:data:`EXECUTION_FILE` (atomically, with
    :func:`bids_vlm.atomic.atomic_path`: a node never reads half of it).

    The nodes are given the folder, not the file: Nipype hashes an input naming an existing
    file by the file's time stamp, so a file rewritten by every run would rerun every node."""
    path = Path(folder) / EXECUTION_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(execution), indent=2) + "\n")
    return path


def read_execution(folder) -> Execution:
    """The :class:`Execution` :func:`write_execution` wrote to ``folder`` ("": the defaults)."""
    if not folder:
        return Execution()
    with open(Path(folder) / EXECUTION_FILE) as handle:
        return Execution(**json.load(handle))
