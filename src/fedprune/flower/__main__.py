"""``python -m fedprune.flower set-connection NAME ADDRESS [--secure]``."""

import sys

from .connection import main

sys.exit(main())
