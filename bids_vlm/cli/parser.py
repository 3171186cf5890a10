"""The parser of ``bids_vlm bids_dir output_dir {participant,group} [options]`` (fMRIPrep's
layout of option groups), its config file, the checks of what it parsed, and the options
resolved into an :class:`~bids_vlm.config.AnalysisConfig` and an
:class:`~bids_vlm.config.Execution`.
"""
from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

from bids_vlm import __version__
from bids_vlm.cli.types import (
    _atlas,
    _banded_layer,
    _column_name,
    _existing_dir,
    _filter_file,
    _fraction,
    _json_object,
    _memory_gb,
    _model_name,
    _non_negative_float,
    _non_negative_int,
    _positive_float,
    _positive_int,
)
from bids_vlm.config import (AnalysisConfig, BoldConfig, EncodingConfig, Execution, ModelConfig,
                             NetworkConfig, RunFilter, StatsConfig, StimulusConfig)
from bids_vlm.models import DEFAULT_MODELS_ENV, REGISTRY, default_models, describe_models
from bids_vlm.models import check_selection as check_model_selection

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network


class _ListModels(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(describe_models())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the BIDS-App command line (fMRIPrep's layout of option groups)."""
    parser = argparse.ArgumentParser(
        prog="bids_vlm", description="Neuron-level fMRI encoding with vision-language models "
        "(BIDS-App). Run 'bids_vlm demo OUT_DIR' for the offline demo.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("bids_dir", type=_existing_dir, help="the root of the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the derivatives are written")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: per-subject analysis; group: combine participants")
    parser.add_argument("--version", action="version", version=f"bids_vlm {__version__}")
    parser.add_argument("--config-file", type=Path, default=None,
                        help="TOML file of option values, keys as the long options without "
                             "dashes (fdr_q = 0.01, models = [\"tiny-clip\"]); flags given on "
                             "the command line override it")
    parser.add_argument("--list-models", action=_ListModels, nargs=0,
                        help="list the models with their streams, layers and ANs, and exit")

    g = parser.add_argument_group("Selecting data")
    g.add_argument("--participant-label", "--participant_label", nargs="+", default=[],
                   help="subjects to analyse (the sub- prefix is optional); default all")
    g.add_argument("--session-label", nargs="+", default=[], help="sessions to analyse")
    g.add_argument("--sessions", choices=("pooled", "separate"), default="pooled",
                   help="pooled (default): the runs of a task from all sessions form one unit "
                        "(leave-one-run-out over all of them); separate: one unit per session")
    g.add_argument("--task", nargs="+", default=[], help="tasks to analyse")
    g.add_argument("--run", nargs="+", type=int, default=[], help="run numbers to analyse")
    g.add_argument("--bids-filter-file", type=_filter_file, default=None,
                   help="PyBIDS filters as JSON, e.g. {\"bold\": {\"acquisition\": \"25mm\"}}")
    g.add_argument("--derivatives", nargs="+", type=_existing_dir, default=[],
                   help="preprocessed derivatives (fMRIPrep); default: datasets under "
                        "bids_dir/derivatives/")
    g.add_argument("--space", default="",
                   help="space of the preprocessed BOLD (e.g. MNI152NLin2009cAsym, T1w); an "
                        "error names the spaces found when no derivative has it; default: "
                        "MNI152NLin2009cAsym, MNI152NLin6Asym, MNI152NLin2009cSym, T1w, in that "
                        "order, whichever a run has; fsLR (or fsLR:den-91k) analyses the CIFTI "
                        "grayordinates of *_space-fsLR_den-91k_bold.dtseries.nii")
    g.add_argument("--cifti-density", choices=["91k", "170k"], default="",
                   help="density of the CIFTI time series (with --space fsLR, its default)")
    g.add_argument("--skip-bids-validation", action="store_true",
                   help="do not validate file names with pybids' validator")

    g = parser.add_argument_group("Stimuli")
    g.add_argument("--stim-rate", type=_positive_float, default=1.0,
                   help="stimulus sampling rate in Hz")
    g.add_argument("--exclude-trial-types", nargs="+", default=[], metavar="TYPE",
                   help="leave out the events of these trial_type values (e.g. catch oddball) "
                        "before the timeline")
    g.add_argument("--text-column", default="",
                   help="events column with text (default: text, caption, sentence or word)")
    g.add_argument("--text-window", type=_non_negative_float, default=0.0,
                   help="seconds: a sample's text is every text (e.g. transcript word) whose "
                        "onset is in the last N seconds; 0 = the text of the event on screen")
    g.add_argument("--text-template", default="",
                   help="text made from event columns, e.g. 'a photo of a {trial_type}'")
    g.add_argument("--stim-column", nargs="+", type=_column_name, default=[],
                   help="events column(s) naming the image or video files (the first non-empty "
                        "value of a row wins); default: the first of stim_file, file_path, "
                        "stimulus, stim, image, movie, video (and other usual names) that the "
                        "events have, else a column of media file names")
    g.add_argument("--stimuli-dir", type=_existing_dir, default=None,
                   help="folder of the stimulus files (default bids_dir/stimuli); a value not "
                        "found as a path relative to it is looked up by its file name in the "
                        "folder's tree")
    g.add_argument("--media-time-column", type=_column_name, default=None,
                   help="events column giving the position in seconds within the video at "
                        "each onset (e.g. videotime of a frame-by-frame log): each row shows "
                        "the video from there, not from its start")

    g = parser.add_argument_group("Models and neurons")
    g.add_argument("--models", nargs="+", default=default_models(), type=_model_name,
                   help=f"models to record: {', '.join(sorted(REGISTRY))}, "
                        "hf-clip:<directory or hub id>, or open_clip:<architecture>:<pretrained "
                        "tag or checkpoint file> (see --list-models)")
    g.add_argument("--streams", nargs="+", default=[], choices=["image", "text", "cross-image", "cross-text"],
                   help="streams to record; default every stream")
    g.add_argument("--layers", nargs="+", type=int, default=[],
                   help="layer indices to record (0-based); default every layer")
    g.add_argument("--model-dir", default="", help="folder with local model weights "
                   "(also $BIDS_VLM_MODEL_DIR)")
    g.add_argument("--image-size", type=_positive_int, default=None,
                   help="METER: image resolution in pixels (the ViT position embedding is "
                        "resized as METER does); default the checkpoint's own")
    g.add_argument("--batch-size", type=_positive_int, default=16)
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="fp16/bf16: CUDA autocast for the models (needs --device cuda)")
    g.add_argument("--neurons", choices=["ffn", "attn"], default="ffn",
                   help="ffn: hidden units of each feed-forward block after the nonlinearity; "
                        "attn: query x key product of each attention head dimension")
    g.add_argument("--pooling", choices=["mean", "cls", "max"], default="mean",
                   help="pooling of each AN over tokens")

    g = parser.add_argument_group("BOLD and statistics")
    g.add_argument("--hrf-model", choices=["spm", "glover", "fir"], default="spm",
                   help="fir: delayed copies instead of an HRF (--fir-delays); association uses "
                        "their mean, the ridge encoding all of them as features")
    g.add_argument("--fir-delays", nargs="+", type=_non_negative_int, default=[1, 2, 3, 4],
                   help="FIR delays in frames (with --hrf-model fir)")
    g.add_argument("--high-pass", type=_positive_float, default=1.0 / 128,
                   help="high-pass cut-off in Hz")
    g.add_argument("--smoothing-fwhm", type=float, default=0.0, help="smoothing in mm")
    g.add_argument("--save-cleaned", action="store_true",
                   help="also write each run's cleaned BOLD (desc-cleaned_bold, float32 NIfTI) "
                        "so that the group level can compute an across-subjects noise ceiling "
                        "(participants who saw the same stimulus sequence, one template space)")
    g.add_argument("--fdr-q", type=_fraction, default=0.05,
                   help="FDR level q (see --fdr-scope)")
    g.add_argument("--fdr-scope", choices=["selective", "an", "all"], default="selective",
                   help="selective: a Simes p per AN, Benjamini-Hochberg across the layer's "
                   "ANs, then BH over voxels within each selected AN at q R / N (controls "
                   "false ANs and false BNs); an: BH over voxels for each AN; all: one BH over "
                   "all AN x voxel pairs of a layer (two passes over the data)")
    g.add_argument("--bn-definition", choices=["unique", "marginal"], default="unique",
                   help="unique: the stream's stimulus-presence regressor and the layer's top "
                   "principal components of its AN regressors are removed from both sides "
                   "(a voxel that only sees 'a stimulus is on' or the layer's shared time course "
                   "is no AN's BN); marginal: the paper's plain correlation")
    g.add_argument("--nuisance-pcs", type=_non_negative_int, default=3,
                   help="principal components of each layer's AN regressors removed with "
                   "--bn-definition unique (default 3; 0: only stimulus presence)")
    g.add_argument("--autocorrelation-correction", choices=["exact", "bartlett", "none"],
                   default="exact", help="exact: the null variance of r given the cleaning "
                   "and each voxel's noise autocorrelation before cleaning (calibrated for "
                   "BOLD); bartlett: the stationary formula on the cleaned series (older, "
                   "anti-conservative after confound regression); none: frames independent")
    g.add_argument("--autocorrelation-lags", type=_positive_int, default=None,
                   help="lags of the autocorrelation estimate (default about 2 sqrt(run length))")
    g.add_argument("--block-size", type=_positive_int, default=256,
                   help="ANs per block of the streamed association (bounds memory)")
    g.add_argument("--mem", type=_memory_gb, default=0.0,
                   help="memory for the association, e.g. 16 or 16GB; sets the block size "
                        "(overrides --block-size)")
    g.add_argument("--keep-entries", type=int, default=100, metavar="K",
                   help="exact r, z and p kept for each AN's K BNs with the largest |z| "
                        "(default 100; 0: none; -1: every BN, large at scale); the BNs "
                        "themselves and their sign are always kept")

    g.add_argument("--paper-mode", action="store_true",
                   help="also learn K sparse temporal atoms of each layer's AN time series, "
                        "fit them to every voxel (t-maps, FDR) and report AN sub-groups")
    g.add_argument("--n-atoms", type=_positive_int, default=64, help="atoms per layer (K)")
    g.add_argument("--atom-alpha", type=_positive_float, default=0.2,
                   help="L1 penalty of the atom loadings (AN time series scaled to unit norm)")
    g.add_argument("--no-encoding", action="store_true",
                   help="skip the layer-wise ridge encoding (held-out r and R^2 per layer)")
    g.add_argument("--banded-layers", nargs="+", type=_banded_layer, default=["last"],
                   metavar="{all,last,none,N}",
                   help="layer indices the streams share at which a banded ridge model splits "
                        "the held-out R^2 between the streams: last (default), all, none, or "
                        "indices (each costs about 20 plain layers' encoding)")
    g.add_argument("--alpha-cv", choices=["nested", "shared"], default="nested",
                   help="how each voxel's ridge penalty is chosen: nested (default), for each "
                        "held-out run by inner folds of the other runs; shared, once per layer "
                        "by inner folds over every run (the held-out run helps choose its "
                        "penalty, not its weights: about 4x faster with 12 runs, null "
                        "calibration in the README)")

    g = parser.add_argument_group("Networks")
    g.add_argument("--atlas", type=_atlas, default="yeo7",
                   help="yeo7, yeo17, schaefer200 or schaefer400 (MNI; each plus the language "
                        "network), or a label image PATH.nii.gz with its labels PATH.tsv "
                        "(columns index, name) in the data's space; on CIFTI grayordinates "
                        "(--space fsLR) yeo7, yeo17 or a label file PATH.dlabel.nii")
    g.add_argument("--n-surrogates", type=_non_negative_int, default=1000,
                   help="spatial null of the network enrichment (a spin test on grayordinates): "
                        "random rigid moves of the "
                        "atlas within the brain (they keep the BN maps' spatial "
                        "autocorrelation); 0: the hypergeometric p, which assumes independent "
                        "voxels, decides 'drives'")
    g.add_argument("--max-surrogates", type=_non_negative_int, default=10000,
                   help="AN x network pairs at the floor p 1/(1 + --n-surrogates) that BH does "
                        "not reject get more moves (x10 per round) up to this many")
    g.add_argument("--network-seed", type=int, default=0,
                   help="seed of the spatial null's random moves")
    g.add_argument("--no-lesion", action="store_true",
                   help="skip the virtual lesion (ridge models refitted without each "
                        "network's top driving ANs)")

    g = parser.add_argument_group("Resources and execution")
    g.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="Nipype work directory (cache; rerun to resume)")
    g.add_argument("--nprocs", type=_positive_int, default=1,
                   help="parallel processes: 1 runs Nipype's Linear plugin, more MultiProc")
    g.add_argument("--omp-nthreads", type=_positive_int, default=None,
                   help="threads per process for torch and BLAS")
    g.add_argument("--plugin", choices=["Linear", "MultiProc", "SLURM", "SGE", "PBS"],
                   default=None, help="Nipype execution plugin (default from --nprocs); "
                   "SLURM/SGE/PBS submit each node as a cluster job")
    g.add_argument("--plugin-args", type=_json_object, default=None,
                   help="JSON object passed to the plugin, e.g. '{\"sbatch_args\": \"-p short\"}'")
    g.add_argument("--force", action="store_true",
                   help="analyse participants again whose outputs are finished with the same "
                        "inputs and options (default: skip them)")
    g.add_argument("--keep-going", action="store_true",
                   help="run the other nodes after a node fails (default: stop on first crash)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--seed", type=int, default=0, help="seed of random-weight models")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    return parser


def apply_config_file(parser, argv):
    """Use the values of ``--config-file`` as defaults, so that command-line flags win."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config-file", type=Path, default=None)
    path = probe.parse_known_args(argv)[0].config_file
    if path is None:
        return
    try:
        values = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        parser.error(f"--config-file {path}: {exc}")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(values) - set(actions) - {"config_file"})
    if unknown:
        parser.error(f"--config-file {path}: unknown option(s) {', '.join(unknown)}")
    for key, value in values.items():
        action = actions[key]
        items = value if isinstance(value, list) else [value]
        if action.type is not None and not isinstance(action, argparse._StoreTrueAction):
            try:
                items = [action.type(str(v)) for v in items]
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"--config-file {path}: {key}: {exc}")
        if action.choices and any(v not in action.choices for v in items):
            parser.error(f"--config-file {path}: {key} must be one of {list(action.choices)}")
        parser.set_defaults(**{key: items if action.nargs == "+" else items[0]})


def check_paths(parser, opts):
    out = opts.output_dir.expanduser().resolve()
    bids = opts.bids_dir
    if out == bids:
        parser.error("output_dir must not be the BIDS directory (the input is never written)")
    if bids in out.parents and (bids / "derivatives") not in [out, *out.parents]:
        parser.error("output_dir inside the BIDS directory must be under its derivatives/")
    opts.output_dir = out


def check_selection(parser, opts):
    try:  # the default, from the environment, is checked too
        opts.models = [_model_name(m) for m in opts.models]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--models (default from ${DEFAULT_MODELS_ENV}): {exc}")

    opts.space = _space_spec(parser, opts.space, opts.cifti_density)
    if opts.precision != "fp32" and opts.device != "cuda":
        parser.error(f"--precision {opts.precision} needs --device cuda")
    if opts.keep_entries < -1:
        parser.error(f"--keep-entries {opts.keep_entries}: expected K >= 0, or -1 (every BN)")
    words = [v for v in opts.banded_layers if v in ("all", "none")]
    if words and len(opts.banded_layers) > 1:
        parser.error(f"--banded-layers {' '.join(opts.banded_layers)}: {words[0]} stands alone")
    try:
        check_model_selection(opts.models, opts.streams, opts.layers)
    except ValueError as exc:
        parser.error(str(exc))


def _space_spec(parser, space: str, density: str) -> str:
    """--space with --cifti-density as one spec (``fsLR:den-91k``, fMRIPrep's form)."""
    if not density:
        return space
    name, _, given = (space or "fsLR").partition(":")
    if given and given != f"den-{density}":
        parser.error(f"--space {space} and --cifti-density {density} disagree")
    return f"{name}:den-{density}"


def config_from_options(opts):
    return AnalysisConfig(
        filters=RunFilter(tuple(opts.participant_label), tuple(opts.session_label),
                          tuple(opts.task), tuple(opts.run), opts.bids_filter_file or "{}"),
        stimuli=StimulusConfig(opts.stim_rate, opts.text_column, opts.text_template,
                               opts.text_window, stim_columns=tuple(opts.stim_column),
                               stimuli_dir=_stimuli_dir(opts),
                               media_time_column=opts.media_time_column or "",
                               exclude_trial_types=tuple(opts.exclude_trial_types)),
        model=ModelConfig(models=tuple(opts.models), streams=tuple(opts.streams),
                          layers=tuple(opts.layers), pooling=opts.pooling,
                          an_kind=opts.neurons, precision=opts.precision,
                          model_dir=opts.model_dir, seed=opts.seed,
                          image_size=opts.image_size or 0),
        bold=BoldConfig(high_pass=opts.high_pass, smoothing_fwhm=opts.smoothing_fwhm,
                        save_cleaned=opts.save_cleaned),
        stats=StatsConfig(hrf_model=opts.hrf_model, fdr_q=opts.fdr_q, fdr_scope=opts.fdr_scope,
                          fir_delays=tuple(opts.fir_delays) if opts.hrf_model == "fir" else (),
                          autocorr=opts.autocorrelation_correction,
                          bn_definition=opts.bn_definition, nuisance_pcs=opts.nuisance_pcs,
                          n_lags=opts.autocorrelation_lags or 0,
                          keep_entries=opts.keep_entries,
                          paper_mode=opts.paper_mode, n_atoms=opts.n_atoms,
                          atom_alpha=opts.atom_alpha),
        encoding=EncodingConfig(enabled=not opts.no_encoding,
                                banded_layers=tuple(opts.banded_layers),
                                alpha_cv=opts.alpha_cv),
        networks=NetworkConfig(atlas=opts.atlas, n_surrogates=opts.n_surrogates,
                               max_surrogates=opts.max_surrogates, seed=opts.network_seed,
                               **({"lesion_steps": ()} if opts.no_lesion else {})),
        derivatives=tuple(str(d) for d in opts.derivatives), sessions=opts.sessions)


def execution_from_options(opts):
    """The :class:`bids_vlm.config.Execution` of the options: how the run executes."""
    return Execution(device=opts.device, batch_size=opts.batch_size, block_size=opts.block_size,
                     mem_gb=opts.mem, nprocs=opts.nprocs, plugin=opts.plugin or "",
                     plugin_args=opts.plugin_args or "{}", omp_nthreads=opts.omp_nthreads or 0,
                     stop_on_first_crash=not opts.keep_going)


def _stimuli_dir(opts) -> str:
    """--stimuli-dir as an absolute path; "" for the default, bids_dir/stimuli (so that naming
    the default does not change the analysis fingerprint)."""
    if opts.stimuli_dir is None or opts.stimuli_dir == Path(opts.bids_dir) / "stimuli":
        return ""
    return str(opts.stimuli_dir)
