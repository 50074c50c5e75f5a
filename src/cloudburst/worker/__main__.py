"""``python -m cloudburst.worker``: the worker loop."""

import sys

from .loop import main

sys.exit(main())
