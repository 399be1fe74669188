"""``python -m mixedae`` (and ``torchrun -m mixedae``) → the ``mixedae`` command."""

import sys

from .cli import main

sys.exit(main())
