"""``python -m cloudburst.worker``: the worker loop."""

import sys

from .main import main

sys.exit(main())
