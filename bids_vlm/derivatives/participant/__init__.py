"""A participant's BIDS-Derivatives: maps, tables and sidecars of every analysis unit."""
from bids_vlm.derivatives.participant.common import NEURON_COLUMNS, func_dir
from bids_vlm.derivatives.participant.unit import write_unit_outputs

__all__ = ["NEURON_COLUMNS", "func_dir", "write_unit_outputs"]
