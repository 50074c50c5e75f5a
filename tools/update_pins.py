"""Regenerate src/cloudburst/pins.py: the uv and boto3 that workers install, pinned by version and sha256.

Reads PyPI's JSON API (https://pypi.org/pypi/<name>/json): the newest uv and boto3, and for boto3 its
dependencies, each at the newest version its requirements allow on Linux with the supported Pythons.
Wheels kept: pure-Python ones, and for uv the manylinux x86_64 and aarch64 ones (Fargate's CPUs). The
base image digests are kept as they are: read them from docker-library/repo-info
(``repos/python/remote/<X.Y>-slim-bookworm.md``, the first ``python@sha256:``) and edit them by hand.

    python tools/update_pins.py            # rewrite the pins module
    python tools/update_pins.py --check    # exit 1 if PyPI has newer pins than the module
"""

from __future__ import annotations

import argparse
import email.parser
import functools
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PINS = Path(__file__).resolve().parent.parent / "src" / "cloudburst" / "pins.py"
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
MACHINES = ("x86_64", "aarch64")


@functools.cache
def _json(name: str) -> dict[str, Any]:
    """The project's JSON page (every release's files and digests; the newest release's metadata)."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as response:
        loaded: dict[str, Any] = json.loads(response.read())
        return loaded


def _newest(name: str, specifier: SpecifierSet) -> str:
    releases = _json(name)["releases"]
    versions = [Version(v) for v, files in releases.items() if files and not Version(v).is_prerelease]
    return str(max(v for v in versions if v in specifier))


def _wanted(filename: str) -> bool:
    if not filename.endswith(".whl"):
        return False
    platform = filename[:-4].rsplit("-", 1)[1]
    return platform == "any" or any(p.startswith("manylinux") and p.endswith(MACHINES) for p in platform.split("."))


def _hashes(name: str, version: str) -> list[str]:
    files = _json(name)["releases"][version]
    found = sorted(f["digests"]["sha256"] for f in files if _wanted(f["filename"]))
    if not found:
        raise SystemExit(f"{name} {version} has no wheel for Linux {'/'.join(MACHINES)} on PyPI")
    return found


def _requires(name: str, version: str) -> list[str]:
    """A release's ``Requires-Dist``, from its wheel's metadata file (PEP 658; the project page has the
    newest release's only)."""
    wheel = min(
        (f for f in _json(name)["releases"][version] if f["filename"].endswith(".whl")), key=lambda f: f["size"]
    )
    url = urllib.parse.urljoin(f"https://pypi.org/pypi/{name}/json", wheel["url"])
    try:
        with urllib.request.urlopen(url + ".metadata", timeout=30) as response:
            text = response.read()
    except urllib.error.HTTPError:  # no metadata file: read it from the wheel itself
        with urllib.request.urlopen(url, timeout=120) as response, zipfile.ZipFile(io.BytesIO(response.read())) as whl:
            text = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA")))
    metadata = email.parser.BytesParser().parsebytes(text)
    return list(metadata.get_all("Requires-Dist") or [])


def _applies(requirement: Requirement) -> bool:
    if requirement.marker is None:
        return True
    results = {
        requirement.marker.evaluate({"python_version": p, "sys_platform": "linux", "extra": ""}) for p in PYTHONS
    }
    if len(results) > 1:
        raise SystemExit(f"{requirement} differs between Pythons {PYTHONS}: pin it per Python by hand")
    return results.pop()


def _closure(root: str) -> dict[str, str]:
    """``{name: version}`` for ``root`` and everything it needs, newest that fits."""
    pinned: dict[str, str] = {}
    todo = [Requirement(root)]
    while todo:
        requirement = todo.pop()
        if requirement.name in pinned or not _applies(requirement):
            continue
        version = _newest(requirement.name, requirement.specifier)
        pinned[requirement.name] = version
        todo += [Requirement(r) for r in _requires(requirement.name, version) if "extra ==" not in r]
    return dict(sorted(pinned.items()))


def _render(groups: dict[str, dict[str, str]]) -> str:
    lines = []
    for group, pinned in groups.items():
        lines.append(f"{group}: dict[str, tuple[str, tuple[str, ...]]] = {{")
        for name, version in pinned.items():
            found = _hashes(name, version)
            if len(found) == 1:  # laid out as ruff formats it
                hashes = f'        ("{found[0]}",),\n'
            else:
                hashes = "        (\n" + "".join(f'            "{h}",\n' for h in found) + "        ),\n"
            lines.append(f'    "{name}": (\n        "{version}",\n{hashes}    ),')
        lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether the module is current")
    args = parser.parse_args()
    text = PINS.read_text()
    start, end = "# --- generated by tools/update_pins.py ---\n", "# --- end of generated pins ---\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    generated = _render({"UV": _closure("uv"), "BOTO3": _closure("boto3")})
    new = head + start + generated + end + tail
    if args.check:
        sys.exit(0 if new == text else 1)
    PINS.write_text(new)
    print(f"wrote {PINS}")


if __name__ == "__main__":
    main()
