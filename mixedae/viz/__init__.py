"""Figures and reports: reconstructions (:mod:`.recon`), cls attention maps with the attention mass on
objects (:mod:`.attention`) and an HTML page comparing pre-training runs (:mod:`.report`). Nothing is
imported at package level, so ``import mixedae.viz`` does not load matplotlib."""
