"""Figures and reports: reconstructions, cls attention maps (with attention mass on objects), and an HTML
page comparing pre-training runs. Submodules import matplotlib lazily through :mod:`.figures`."""
