"""``python -m supervisor``: the same as ``scripts/run_local.py``."""

import sys

from .cli import main

sys.exit(main())
