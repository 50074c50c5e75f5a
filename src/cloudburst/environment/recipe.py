"""The image recipe of a snapshot: its tag, its Dockerfile and its build context (local packages built into
wheels for the workers' platform, cloudburst itself copied in).

::

    tag()        ─► sha256 of everything that goes into the image (lock, Python, base, arch,
                    cloudburst version): the same environment gives the same tag
    dockerfile() ─► official slim Python base of the same minor version, uv, the worker entrypoint
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import parse_wheel_filename

from ..errors import ConfigurationError
from ..version import __version__
from .pins import BASE_IMAGES, UV, requirements_text

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["base_image", "build_context", "build_wheel", "dockerfile", "needs_git", "tag"]


def base_image(python: str) -> str:
    """The official slim image, on a named Debian release: its glibc (2.36) is what the ARM64 check assumes.
    Built images start from it; ``image="python"`` workers run it as it is. Named by its digest
    (``cloudburst.environment.pins``), so a re-pushed tag is never pulled."""
    if python not in BASE_IMAGES:
        raise ConfigurationError(
            f"cloudburst has no pinned digest of the python:{python}-slim-bookworm image workers would start from: "
            f"use a Python it has one for ({', '.join(BASE_IMAGES)}), or pass image='<uri>' naming your own image"
        )
    return f"public.ecr.aws/docker/library/python:{python}-slim-bookworm@{BASE_IMAGES[python]}"


def tag(snap: Snapshot, *, arch: str = "x86_64") -> str:
    """The image tag: a hash of everything that goes into the image."""
    recipe = {
        # where files are on this machine does not count, only what they hold (local_digest)
        "snapshot": asdict(snap) | {"notes": [], "requirements_file": "", "source": "", "local": len(snap.local)},
        "base": base_image(snap.python),
        "arch": arch,
        "cloudburst": __version__,
        "dockerfile": dockerfile(snap),
        "uv": _uv_pins(),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"py{snap.python}-{arch}-{digest[:16]}"


def _uv_pins() -> str:
    """The requirements file that installs uv, pinned by version and hash, in the image."""
    return requirements_text(UV)


def needs_git(snap: Snapshot) -> bool:
    """Whether a requirement is a git checkout (the slim image has no git)."""
    return any("git+" in r for r in snap.requirements)


def dockerfile(snap: Snapshot) -> str:
    """The image recipe: the user never writes one."""
    # The index logins, when there are any, are a build secret mounted for the install step only.
    secret = "--mount=type=secret,id=netrc,required=false NETRC=/run/secrets/netrc " if snap.private_hosts else ""
    lines = [
        f"FROM {base_image(snap.python)}",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1",
    ]
    if needs_git(snap):
        lines.append(
            "RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*"
        )
    lines += [  # uv pinned by version and hash (cloudburst.environment.pins)
        "COPY uv-requirements.txt /cloudburst/uv-requirements.txt",
        "RUN pip install --no-cache-dir --no-deps --require-hashes -r /cloudburst/uv-requirements.txt",
        "COPY requirements.txt /cloudburst/requirements.txt",
    ]
    wheels = ""
    if snap.local:
        lines.append("COPY wheels/ /cloudburst/wheels/")
        wheels = " /cloudburst/wheels/*.whl"
    # One resolution for everything, local wheels included, with the same indexes.
    lines.append(f"RUN {secret}uv pip install --system --no-cache -r /cloudburst/requirements.txt{wheels}")
    lines += [
        "COPY cloudburst/ /cloudburst/lib/cloudburst/",  # this very cloudburst, whatever installed it
        "ENV PYTHONPATH=/cloudburst/lib",
        'CMD ["python", "-m", "cloudburst.worker"]',
    ]
    return "\n".join(lines) + "\n"


def build_wheel(path: str, out: Path, *, arch: str = "x86_64") -> None:
    """Build a wheel of a local package (with pip, else uv) that runs on Linux ``arch``, or say why not."""
    before = set(out.glob("*.whl"))
    if Path(path).is_file() and path.endswith(".whl"):
        shutil.copy(path, out)  # installed from a wheel file: ship that wheel
        _check_platform(path, set(out.glob("*.whl")) - before, arch)
        return
    is_archive = Path(path).is_file() and path.endswith((".tar.gz", ".zip", ".tar.bz2"))
    if not is_archive and not Path(path, "pyproject.toml").is_file() and not Path(path, "setup.py").is_file():
        raise ConfigurationError(
            f"the local package at {path} cannot be shipped: "
            + ("it no longer exists" if not Path(path).exists() else "it has no pyproject.toml or setup.py")
            + ". Reinstall it from where it lives now, or name a requirements file without it (requirements=...)"
        )
    if importlib.util.find_spec("pip") is not None:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), path]
    elif shutil.which("uv"):
        command = [str(shutil.which("uv")), "build", "--wheel", "--quiet", "--out-dir", str(out), path]
    else:
        raise ConfigurationError(
            f"building a wheel of the local package at {path} needs pip or uv, and neither is here: "
            "install one (`python -m ensurepip`, or https://docs.astral.sh/uv/)"
        )
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise ConfigurationError(
            f"could not build a wheel of the local package at {path} ({command[2] if command[1] == '-m' else 'uv'} "
            f"exited {result.returncode}); fix its build, or install it from an index instead:\n{tail}"
        )
    _check_platform(path, set(out.glob("*.whl")) - before, arch)


def _check_platform(path: str, wheels: set[Path], arch: str) -> None:
    """Refuse a local wheel with compiled code for another platform than the workers' (Linux, ``arch``)."""
    machine = "aarch64" if arch == "arm64" else "x86_64"
    for wheel in wheels:
        platforms = {t.platform for t in parse_wheel_filename(wheel.name)[3]}
        if platforms == {"any"} or all("linux" in p and p.endswith(machine) for p in platforms):
            continue
        wheel.unlink()
        raise ConfigurationError(
            f"the local package at {path} has compiled code, and its wheel is for {', '.join(sorted(platforms))}, "
            f"not for the workers (Linux {arch}): publish a manylinux {machine} wheel of it to an index, or "
            f"build it on Linux {arch}"
        )


def build_context(snap: Snapshot, folder: Path, *, arch: str = "x86_64") -> Path:
    """Write the image's build context: Dockerfile, requirements.txt, local wheels, cloudburst itself."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(dockerfile(snap))
    (folder / "requirements.txt").write_text(snap.requirements_txt())
    (folder / "uv-requirements.txt").write_text(_uv_pins())
    if snap.local:
        wheels = folder / "wheels"
        wheels.mkdir(exist_ok=True)
        for path in snap.local:
            build_wheel(path, wheels, arch=arch)
    package = Path(__file__).resolve().parent.parent  # cloudburst itself, this module's package's parent
    shutil.copytree(package, folder / "cloudburst", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder
