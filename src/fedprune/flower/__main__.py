"""``python -m fedprune.flower set-connection NAME ADDRESS [--secure | --root-certificates
CA]``."""

import sys

from .connection import main

sys.exit(main())
