"""One-time AWS set-up, its check (doctor) and its removal (teardown).

::

    setup     credentials (STS) ─► KMS key (--kms-key) ─► bucket ─► ECR repository ─► cluster ─► log group ─► network
              ─► roles (execution, task: least privilege) ─► quotas ─► save config.toml
    doctor    the same steps, looking only: every problem with a one-line fix
    teardown  what setup made, found by its tag cloudburst=true, after confirmation

One module per concern: ``context`` (account, report, names), ``resources`` (KMS key, bucket,
repository, cluster, log groups), ``network``, ``roles``, ``checks`` (quotas, build tools), ``run``
(setup, doctor) and ``teardown``. Every step is idempotent: it finds what is there, makes what is
missing, repairs what is wrong, and says which. Everything made is tagged ``cloudburst=true``.
"""

from __future__ import annotations

from .context import Report, Step
from .run import doctor, setup
from .teardown import teardown

__all__ = ["Report", "Step", "doctor", "setup", "teardown"]
