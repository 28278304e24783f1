"""`python -m rp_pipeline`: the sync's command line (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
