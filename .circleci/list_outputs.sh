#!/usr/bin/env bash
# The sorted list of the files under a bids_vlm output directory, relative to it, with the time
# stamp in the configuration logs' names replaced by <time> (the only names that change from run
# to run). CircleCI diffs it against .circleci/demo_outputs.txt; so does tests/e2e/test_demo.py.
# Usage: bash .circleci/list_outputs.sh OUTPUT_DIR > outputs.txt
set -euo pipefail
cd "$1"
find . -type f | sed -E -e 's|^\./||' -e 's/_[0-9]{8}-[0-9]{6}\.toml$/_<time>.toml/' | LC_ALL=C sort
