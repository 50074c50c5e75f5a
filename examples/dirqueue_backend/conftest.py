"""Run alone, the example's tests keep cloudburst's settings, job records and cache in a folder of their own."""

import os
import tempfile

_PRIVATE = tempfile.mkdtemp(prefix="cloudburst-dirqueue-tests-")
for _name in ("CONFIG", "JOBS", "CACHE"):
    os.environ.setdefault(f"CLOUDBURST_{_name}_DIR", os.path.join(_PRIVATE, _name.lower()))
