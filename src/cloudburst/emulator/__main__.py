"""``python -m cloudburst.emulator``: emulated AWS for the ``cloudburst`` command and other programs.

::

    python -m cloudburst.emulator              prints `export ...` lines, then runs until Ctrl-C
    python -m cloudburst.emulator --shell      a subshell in the emulated environment; stops when it exits
    python -m cloudburst.emulator -- CMD ...   runs CMD in it; stops when CMD exits, with CMD's exit status

The environment names the emulator's endpoint, fake credentials, the region, and the emulator's
own folder for settings, detached-job records and caches, so nothing reaches AWS or the user's
own settings. The emulated account is set up already (``cloudburst setup`` finds it done).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from . import Emulator

READY = "# emulated AWS is ready; Ctrl-C stops it"


def exports(environment: dict[str, str | None]) -> list[str]:
    """POSIX shell lines that give another shell the emulated environment."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in environment.items() if value is not None]
    removed = sorted(name for name, value in environment.items() if value is None)
    if removed:
        lines.append(f"unset {' '.join(removed)}")
    return lines


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    args = list(argv)
    command: list[str] = []
    if "--" in args:
        at = args.index("--")
        args, command = args[:at], args[at + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m cloudburst.emulator",
        description="Emulated AWS on this machine, for `cloudburst` commands and any program using boto3.",
        epilog="Without --shell or -- CMD: prints the environment as `export` lines and runs until Ctrl-C.",
    )
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--cold-start", type=float, default=0.0, help="seconds each task waits, as image pulls do")
    parser.add_argument("--shell", action="store_true", help="run a subshell ($SHELL) in the emulated environment")
    return parser.parse_args(args), command


def _run(command: list[str]) -> int:
    """Run ``command`` to its end; returns its exit status (128 + N if signal N ended it, as shells do)."""
    child = subprocess.Popen(command)
    # Ctrl-C reaches the child through the terminal; it decides what to do, and we stop when it ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.terminate())
    code = child.wait()
    return 128 - code if code < 0 else code


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the `with` block, which stops the emulator


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator as the command line asks; returns the exit status."""
    options, command = _parse(sys.argv[1:] if argv is None else argv)
    if options.shell:
        command = [os.environ.get("SHELL") or "/bin/sh"]
        print(
            "cloudburst: a shell in the emulated environment; leave it (`exit`) to stop the emulator", file=sys.stderr
        )
    signal.signal(signal.SIGTERM, _stop)
    try:
        with Emulator(region=options.region, cold_start=options.cold_start) as emu:
            if command:
                return _run(command)
            print("# the emulated environment: run these lines in another shell (or use --shell)")
            print("\n".join(exports(emu.environment)))
            print(READY, flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
