"""The command line: the parser (:mod:`.parser`), the run (:mod:`.run`, the ``bids_vlm``
command), the weights baker (:mod:`.bake`), the demo (:mod:`.demo`) and the Boutiques
descriptor (:mod:`.boutiques`)."""
