"""Whether an environment installs on Linux ARM64 (Graviton): every pinned package needs a wheel for it.

::

    require_arm64_wheels(snapshot)
        pure-Python distributions installed here (WHEEL tag py3-none-any) ─► fine, no request
        the rest: the index's simple page for each (PEP 691 JSON, or the HTML page) ─► is there a wheel
        of the pinned version whose tags a CPython of this minor version on manylinux aarch64 accepts?
        any without one ─► ConfigurationError naming them, before an image is built or a worker runs

Answers that a wheel exists are cached in the user's cache directory (a released file does not go away).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from ..config.userconfig import cache_dir
from ..errors import ConfigurationError
from ..log import say
from .lockfiles import canonical
from .snapshot import Snapshot, index_logins

__all__ = ["PYPI", "arm64_platforms", "missing_arm64_wheels", "require_arm64_wheels"]

PYPI = "https://pypi.org/simple"
_JSON = "application/vnd.pypi.simple.v1+json"


def arm64_platforms() -> list[str]:
    """The platform tags pip accepts on the workers' base image (Debian bookworm: glibc 2.36, aarch64)."""
    return [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64", "linux_aarch64"]


def _supported(python: str) -> frozenset[object]:
    from packaging import tags

    version = tuple(int(part) for part in python.split("."))
    platforms = arm64_platforms()
    found = [*tags.cpython_tags(version, platforms=platforms), *tags.compatible_tags(version, platforms=platforms)]
    return frozenset(found)


def _pure_here(name: str, version: str) -> bool:
    """Installed here at this version, from a wheel that runs anywhere."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    if dist.version != version:
        return False
    wheel = dist.read_text("WHEEL") or ""
    found = re.findall(r"^Tag:\s*(\S+)", wheel, flags=re.MULTILINE)
    return bool(found) and all(t.endswith("-none-any") for t in found)


def _cache_file() -> Path:
    return cache_dir() / "arm64-wheels.json"


def _filenames(index: str, name: str, credentials: dict[str, tuple[str, str]]) -> list[str] | None:
    """The file names on an index's simple page for ``name`` (None when the index does not know it)."""
    url = f"{index.rstrip('/')}/{name}/"
    request = urllib.request.Request(url, headers={"Accept": f"{_JSON}, text/html;q=0.1"})
    host = urllib.parse.urlsplit(index).hostname or ""
    if host in credentials:
        user, password = credentials[host]
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {login}")  # not sent on to another host
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            body = response.read().decode("utf-8", "replace")
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    if _JSON in kind or body.lstrip().startswith("{"):
        return [str(f["filename"]) for f in json.loads(body).get("files", [])]
    hrefs = re.findall(r"""href=["']([^"'#]+)""", body)
    return [urllib.parse.unquote(h.rsplit("/", 1)[-1]) for h in hrefs]


def _has_wheel(filenames: Iterable[str], name: str, version: str, supported: frozenset[object]) -> bool:
    from packaging.utils import InvalidWheelFilename, canonicalize_version, parse_wheel_filename

    wanted = canonicalize_version(version)
    for filename in filenames:
        if not filename.endswith(".whl"):
            continue
        try:
            wheel_name, wheel_version, _, wheel_tags = parse_wheel_filename(filename)
        except InvalidWheelFilename:
            continue
        if wheel_name != name or canonicalize_version(wheel_version) != wanted:
            continue
        if any(t in supported for t in wheel_tags):
            return True
    return False


def missing_arm64_wheels(snap: Snapshot) -> tuple[list[str], list[str]]:
    """``(pinned packages with no ARM64 wheel, notes)`` for this snapshot's Python and indexes."""
    credentials = index_logins(snap)
    indexes = list(snap.index_urls) if not snap.extra_index else [PYPI, *snap.index_urls]
    pinned: list[tuple[str, str]] = []
    notes: list[str] = []
    for requirement in (*snap.requirements, *snap.runtime):
        spec = requirement.split(";", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*==\s*([^\s,]+)", spec)
        if not match:
            notes.append(f"{spec}: not pinned, so not checked for ARM64 wheels")
            continue
        pinned.append((canonical(match.group(1)), match.group(2)))
    cache_path = _cache_file()
    try:
        known = set(json.loads(cache_path.read_text()).get(snap.python, []))
    except (OSError, ValueError):
        known = set()
    supported = _supported(snap.python)
    to_ask = [(n, v) for n, v in pinned if f"{n}=={v}" not in known and not _pure_here(n, v)]

    def ask(item: tuple[str, str]) -> tuple[str, bool]:
        name, version = item
        for index in indexes:
            files = _filenames(index, name, credentials)
            if files is not None and _has_wheel(files, name, version, supported):
                return f"{name}=={version}", True
        return f"{name}=={version}", False

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, to_ask))
    except (OSError, ValueError) as exc:
        notes.append(f"could not reach the package index to check for ARM64 wheels ({exc}); not checked")
        return [], notes
    missing = sorted(pinned_name for pinned_name, ok in answers if not ok)
    found = {pinned_name for pinned_name, ok in answers if ok}
    if found - known:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                stored = json.loads(cache_path.read_text())
            except (OSError, ValueError):
                stored = {}
            stored[snap.python] = sorted(set(stored.get(snap.python, [])) | found)
            cache_path.write_text(json.dumps(stored))
        except OSError:
            pass
    return missing, notes


def require_arm64_wheels(snap: Snapshot) -> None:
    """Refuse ``arch='arm64'`` before anything is built or launched when a package has no ARM64 wheel."""
    missing, notes = missing_arm64_wheels(snap)
    for note in notes:
        say(f"cloudburst: {note}")
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        raise ConfigurationError(
            f"arch='arm64' needs a Linux ARM64 wheel of every package, and {len(missing)} have none at the pinned "
            f"version: {shown}. Use arch='x86_64' (the default), or pin versions that publish manylinux aarch64 "
            "wheels (requirements=...)."
        )
