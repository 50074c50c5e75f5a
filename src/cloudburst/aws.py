"""``cloudburst.setup()``, ``doctor()`` and ``teardown()``: the one-time AWS set-up from Python.

The same as the ``cloudburst setup|doctor|teardown`` commands. boto3 is imported when they run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .backends.aws.setup import Report

__all__ = ["doctor", "setup", "teardown"]


def _ask(yes: bool) -> Callable[[str], bool] | None:
    if yes:
        return None

    def confirm(question: str) -> bool:
        if not sys.stdin.isatty():
            raise ConfigurationError(f"{question.strip()}: no terminal to ask; pass yes=True to confirm")
        return input(f"{question} [Y/n] ").strip().lower() in ("", "y", "yes")

    return confirm


def setup(
    *, yes: bool = False, region: str | None = None, profile: str | None = None, subnets: list[str] | None = None
) -> Report:
    """Create or repair the bucket, ECR repository, ECS cluster, roles, log group and network; save them."""
    from .backends.aws.setup import setup as run

    return run(region=region, profile=profile, subnets=subnets, confirm=_ask(yes))


def doctor(*, region: str | None = None, profile: str | None = None) -> Report:
    """Check the set-up without changing anything; every problem comes with a one-line fix."""
    from .backends.aws.setup import doctor as run

    return run(region=region, profile=profile)


def teardown(*, yes: bool = False, region: str | None = None, profile: str | None = None) -> Report:
    """Remove what setup made (found by its tag ``cloudburst=true``), and nothing else."""
    from .backends.aws.setup import teardown as run

    return run(region=region, profile=profile, confirm=_ask(yes))
