"""Sub-command wiring for :mod:`mixedae.cli`: one module per group, each with ``register(subparsers)``."""
