"""A snapshot of the local Python environment: what workers need installed, and the image recipe.

::

    snapshot()  ─► Python version + installed distributions, pinned (or a requirements file,
                   uv.lock or pyproject.toml you name) ─► local/editable installs listed to be
                   built into wheels ─► platform-only packages left out, with a note
    tag()       ─► sha256 of everything that goes into the image (lock, Python, base, arch,
                   cloudburst version): the same environment gives the same tag
    dockerfile()─► official slim Python base of the same minor version, uv, the worker entrypoint

Index settings are carried over without credentials: ``https://user:token@host/simple``
becomes ``https://host/simple``, and the credentials are supplied when the image is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.parse
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from . import __version__

__all__ = ["PLATFORM_ONLY", "Snapshot", "build_context", "dockerfile", "snapshot", "strip_credentials", "tag"]

#: Distributions that exist only for macOS or Windows: they cannot install on a Linux worker.
PLATFORM_ONLY = frozenset(
    {"appnope", "pywin32", "pywin32-ctypes", "pywinpty", "wmi", "comtypes", "pyobjc", "macholib", "winshell"}
)
_PLATFORM_PREFIXES = ("pyobjc-", "pywin32-")
_NEVER_SHIPPED = frozenset({"pip", "setuptools", "wheel", "uv", "cloudburst"})  # the image brings its own


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def strip_credentials(url: str) -> str:
    """An index URL without the user and password it may carry."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Snapshot:
    python: str  # "3.11"
    requirements: tuple[str, ...]  # "name==version", sorted
    local: tuple[str, ...] = ()  # paths of local or editable installs, to build into wheels
    left_out: tuple[str, ...] = ()  # platform-only distributions, not installable on Linux
    index_urls: tuple[str, ...] = ()  # without credentials
    source: str = "installed distributions"
    notes: tuple[str, ...] = field(default_factory=tuple)

    def requirements_txt(self) -> str:
        lines = [f"--index-url {self.index_urls[0]}"] if self.index_urls else []
        lines += [f"--extra-index-url {url}" for url in self.index_urls[1:]]
        return "\n".join([*lines, *self.requirements]) + "\n"


def _direct_url(dist: metadata.Distribution) -> dict[str, object] | None:
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _index_urls() -> tuple[str, ...]:
    urls = []
    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"):
        for url in os.environ.get(name, "").split():
            if url.startswith(("http://", "https://")):
                urls.append(strip_credentials(url))
    return tuple(dict.fromkeys(urls))


def _from_file(path: Path) -> tuple[list[str], str]:
    """Requirements from a file the user names: requirements*.txt, uv.lock or pyproject.toml."""
    if path.name == "uv.lock":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        lock = tomllib.loads(path.read_text())
        found = []
        for package in lock.get("package", []):
            source = package.get("source", {})
            if "editable" in source or "virtual" in source:
                continue  # the project itself: shipped as code or built as a local wheel
            found.append(f"{package['name']}=={package['version']}")
        return found, f"uv.lock ({path})"
    if path.name == "pyproject.toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        project = tomllib.loads(path.read_text()).get("project", {})
        return list(project.get("dependencies", [])), f"pyproject.toml dependencies ({path})"
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines, f"requirements file ({path})"


def snapshot(requirements: str | Path | None = None) -> Snapshot:
    """The environment workers need: from a file you name, else from what this interpreter has installed."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    local: list[str] = []
    left_out: list[str] = []
    notes: list[str] = []
    if requirements is not None:
        found, source = _from_file(Path(requirements))
    else:
        found, source = [], "installed distributions"
        for dist in metadata.distributions():
            name = dist.metadata["Name"]
            if not name:
                continue
            canonical = _canonical(name)
            if canonical in _NEVER_SHIPPED:
                continue
            if canonical in PLATFORM_ONLY or canonical.startswith(_PLATFORM_PREFIXES):
                left_out.append(canonical)
                continue
            direct = _direct_url(dist)
            url = str(direct.get("url", "")) if direct else ""
            if url.startswith("file://"):
                local.append(urllib.parse.unquote(url.removeprefix("file://")))
                continue
            found.append(f"{canonical}=={dist.version}")
    kept = []
    for requirement in found:
        name = _canonical(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        if name in PLATFORM_ONLY or name.startswith(_PLATFORM_PREFIXES):
            left_out.append(name)
        elif name not in _NEVER_SHIPPED:
            kept.append(requirement)
    if left_out:
        notes.append(f"left out, as they exist only for macOS or Windows: {', '.join(sorted(set(left_out)))}")
    if local:
        notes.append(f"built into wheels and shipped: {', '.join(sorted(local))}")
    return Snapshot(
        python=python,
        requirements=tuple(sorted(set(kept), key=str.lower)),
        local=tuple(sorted(set(local))),
        left_out=tuple(sorted(set(left_out))),
        index_urls=_index_urls(),
        source=source,
        notes=tuple(notes),
    )


def base_image(python: str) -> str:
    return f"public.ecr.aws/docker/library/python:{python}-slim"


def tag(snap: Snapshot, *, arch: str = "x86_64", wheel_digests: tuple[str, ...] = ()) -> str:
    """The image tag: a hash of everything that goes into the image."""
    recipe = {
        "snapshot": asdict(snap) | {"notes": []},
        "base": base_image(snap.python),
        "arch": arch,
        "cloudburst": __version__,
        "wheels": sorted(wheel_digests),
        "dockerfile": dockerfile(snap),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"py{snap.python}-{arch}-{digest[:16]}"


def dockerfile(snap: Snapshot) -> str:
    """The image recipe: the user never writes one."""
    lines = [
        f"FROM {base_image(snap.python)}",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1",
        "RUN pip install --no-cache-dir uv",
        "COPY requirements.txt /cloudburst/requirements.txt",
        "RUN uv pip install --system --no-cache -r /cloudburst/requirements.txt",
    ]
    if snap.local:
        lines += ["COPY wheels/ /cloudburst/wheels/", "RUN uv pip install --system --no-cache /cloudburst/wheels/*.whl"]
    lines += [
        "COPY cloudburst/ /cloudburst/lib/cloudburst/",  # this very cloudburst, whatever installed it
        "ENV PYTHONPATH=/cloudburst/lib",
        'CMD ["python", "-m", "cloudburst.worker"]',
    ]
    return "\n".join(lines) + "\n"


def build_context(snap: Snapshot, folder: Path) -> Path:
    """Write the image's build context: Dockerfile, requirements.txt, local wheels, cloudburst itself."""
    import shutil
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(dockerfile(snap))
    (folder / "requirements.txt").write_text(snap.requirements_txt())
    if snap.local:
        wheels = folder / "wheels"
        wheels.mkdir(exist_ok=True)
        for path in snap.local:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), path], check=True
            )
    package = Path(__file__).resolve().parent
    shutil.copytree(package, folder / "cloudburst", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder
