"""What cloudburst tells its user goes through the ``cloudburst`` logger.

::

    logging.getLogger("cloudburst").setLevel(logging.WARNING)   # only problems
    logging.getLogger("cloudburst").disabled = True              # nothing
    logging.getLogger("cloudburst").propagate = True             # into your own handlers as well

By default one handler writes each message as a line, ``cloudburst: ...``, to whatever ``sys.stderr``
is when it is written (a notebook's, a test's capture), as cloudburst always has. The logger does not
pass messages on to the root logger, so a program that configures logging sees no line twice (the
``cloudburst`` logger and those below it are cloudburst's own: a task's loggers have other names);
replace the handler (``logger.handlers[:] = [...]``) to send them elsewhere. Progress bars and the
output of tasks, relayed from workers, do not go through it.

Levels: INFO for what cloudburst is doing (workers starting, their cost, a job left running);
WARNING for what went wrong and was worked around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["logger", "say", "warn"]

logger = logging.getLogger("cloudburst")


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler bound to ``sys.stderr`` as it is at each message, not as it was at import."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def _default_handler() -> logging.Handler:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("cloudburst: %(message)s"))
    handler.set_name("cloudburst-default")
    return handler


if not any(h.get_name() == "cloudburst-default" for h in logger.handlers):
    logger.addHandler(_default_handler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def say(message: str) -> None:
    """Tell the user what cloudburst is doing (INFO). A leading ``cloudburst: `` is the handler's to add."""
    logger.info(message.removeprefix("cloudburst: "))


def warn(message: str) -> None:
    """Tell the user what went wrong and how it was worked around (WARNING)."""
    logger.warning(message.removeprefix("cloudburst: "))
