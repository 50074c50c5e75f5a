"""The exit codes a worker process ends with on purpose, which the client's watch reads: one place for every
backend, its worker loop, and the Fargate bootstrap (which has them written into its source)."""

from __future__ import annotations

__all__ = ["EXIT_ENVIRONMENT", "OOM_EXIT_CODE"]

#: the worker's environment cannot be installed (sysexits' EX_CONFIG): the client stops starting workers at the
#: first one, as every other would fail the same way
EXIT_ENVIRONMENT = 78
#: killed for memory: what a container reports for a process the kernel killed, and the worker's own exit when
#: its memory watchdog stops it first
OOM_EXIT_CODE = 137
