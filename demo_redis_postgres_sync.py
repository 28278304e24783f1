#!/usr/bin/env python3
"""The guide's demo: populate Redis with sample models, datasets, runs, metrics and predictions,
sync them to PostgreSQL, verify them there and show the statistics (see rp_pipeline/demo.py).

    python demo_redis_postgres_sync.py            # REDIS_URL, POSTGRES_URL, REDIS_KEY_PREFIX or ./.env
"""

import sys

try:
    from rp_pipeline.demo import main
except ImportError as exc:  # the project or one of its dependencies is not installed
    print(
        f"Error: {exc}: install the project first with `pip install -e .` (in a virtualenv) "
        "in the repository.",
        file=sys.stderr,
    )
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
