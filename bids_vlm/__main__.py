"""``python -m bids_vlm`` runs the command-line interface."""
import sys

from bids_vlm.cli.run import main

sys.exit(main())
