"""The ``bids_vlm`` command: ``bids_vlm bids_dir output_dir {participant,group} [options]``.

Also ``bids_vlm demo OUT_DIR``: the whole analysis on the embedded Haxby demo data, offline.
Exit codes: see :mod:`bids_vlm.errors` and the README.
"""
from __future__ import annotations

import logging
import os
import sys

from bids_vlm.cli.demo import demo_runs
from bids_vlm.cli.parser import (
    apply_config_file,
    build_parser,
    check_paths,
    check_selection,
    config_from_options,
    execution_from_options,
)
from bids_vlm.errors import BidsVlmError
from bids_vlm.logs import setup_logging
from bids_vlm.models import random_weights_warning
from bids_vlm.progress import QUIET_ENV


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    parser = build_parser()
    apply_config_file(parser, argv)
    opts = parser.parse_args(argv)
    check_paths(parser, opts)
    check_selection(parser, opts)
    setup_logging(opts.verbose, opts.quiet)
    _warn_random_weights(opts)
    if opts.quiet:
        os.environ[QUIET_ENV] = "1"  # see bids_vlm.progress
    try:
        # local import: Nipype and the stages load only when a level runs, not for --help
        from bids_vlm.runner import run_group, run_participant

        config, execution = config_from_options(opts), execution_from_options(opts)
        if opts.analysis_level == "participant":
            reports = run_participant(opts.bids_dir, opts.output_dir, config, opts.work_dir,
                                      execution, opts.space, not opts.skip_bids_validation,
                                      force=opts.force)
        else:
            reports = run_group(opts.bids_dir, opts.output_dir, config, opts.work_dir,
                                execution)
    except BidsVlmError as exc:
        print(f"bids_vlm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for report in reports:
        print(f"Report: {report}")
    return 0


def _demo(argv) -> int:
    """``bids_vlm demo OUT_DIR``: the participant and group levels on the embedded demo data."""
    runs, derivatives = demo_runs(argv)
    for args in runs:
        code = main(args)
        if code:
            return code
    print(f"Demo finished. Open {derivatives / 'sub-1.html'} and {derivatives / 'group.html'}")
    return 0


def _warn_random_weights(opts):
    """A participant-level run with a random-weight test model says so (also in the report)."""
    warning = random_weights_warning(opts.models)
    if warning and opts.analysis_level == "participant":
        logging.getLogger("bids_vlm").warning(warning)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
