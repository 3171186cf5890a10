"""bids_vlm: neuron-level fMRI encoding with vision-language models, as a BIDS-App."""

__version__ = "0.1.0"
