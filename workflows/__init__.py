"""Nipype execution layer of bids_vlm: the participant and group graphs.

Each node calls one stage function of :mod:`bids_vlm`; the graph gives caching in the work
directory, resumption and the execution plugins (Linear, MultiProc).
"""
