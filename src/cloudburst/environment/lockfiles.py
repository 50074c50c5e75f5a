"""Requirements from a file the user names: requirements*.txt (``-r`` includes, ``-e``, hashes, index
options), a uv.lock (the Linux side of a universal lock) or a pyproject.toml. Local packages are listed to be
built into wheels; a login inside a requirement's URL is refused.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker

from ..errors import ConfigurationError
from .indexes import strip_credentials

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["FromFile", "canonical", "from_file", "refuse_logins_in", "requirement_name"]


def canonical(name: str) -> str:
    """A distribution's name as package indexes compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The canonical name a requirement line installs (``Foo_Bar[x]>=1 ; marker`` gives ``foo-bar``)."""
    return canonical(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def _toml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads(path.read_text())
    return loaded


@dataclass
class FromFile:
    """What a requirements file, lock or pyproject.toml names."""

    requirements: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)  # directories to build into wheels
    index_urls: list[str] = field(default_factory=list)  # with credentials, as written
    replaces_index: bool = False
    notes: list[str] = field(default_factory=list)
    hashes: dict[str, list[str]] = field(default_factory=dict)  # requirement: ["sha256:...", ...]


def _file_path(url: str) -> str:
    """The local path a ``file:`` URL names (drive letters included on Windows)."""
    parts = urllib.parse.urlsplit(url.split(" --", 1)[0].strip())
    local = parts.netloc in ("", "localhost")
    return urllib.request.url2pathname(parts.path if local else f"//{parts.netloc}{parts.path}")


def refuse_logins_in(requirement: str, where: str) -> None:
    """A login inside a requirement's URL would be copied into the image: refuse it, saying what to do."""
    for url in re.findall(r"[a-z+]+://\S+", requirement):
        parts = urllib.parse.urlsplit(url.removeprefix("git+"))
        if parts.scheme == "ssh":
            raise ConfigurationError(
                f"{where}: the requirement {strip_credentials(url)} is fetched over SSH, with keys the workers do not "
                "have: use its https:// URL (a public repository), or check it out and name it as -e ./path"
            )
        if parts.username or parts.password:
            raise ConfigurationError(
                f"{where}: the requirement {strip_credentials(url.removeprefix('git+'))} carries a login in its URL, "
                "which would be copied into the workers' image. Publish the package to a private index (its login "
                "is passed to workers as a secret), or check it out and name it as a local package (-e ./path)"
            )


def _target_markers(arch: str) -> dict[str, str]:
    """The environment markers of a worker: Linux on ``arch``, CPython of this version (the image has
    this minor version, at a patch level at least as new)."""
    return {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "aarch64" if arch == "arm64" else "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "python_full_version": platform.python_version(),
    }


def _lock_packages(packages: list[dict[str, Any]], target: dict[str, str]) -> list[dict[str, Any]]:
    """What a Linux worker installs from a universal lock: walked from its projects (editable or virtual
    sources) along the dependency edges whose markers hold for the worker, as ``uv sync`` does (the
    ``dev`` group included), taking the fork of each package meant for the worker. A lock without a
    project: every package, forks chosen the same way."""

    def holds(marker: str | None, markers: list[str] | None = None) -> bool:
        try:
            if marker is not None:
                return bool(Marker(marker).evaluate(target | {"extra": ""}))
            return not markers or any(Marker(m).evaluate(target | {"extra": ""}) for m in markers)
        except InvalidMarker:
            return True

    forks: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        forks.setdefault(canonical(package["name"]), []).append(package)

    def pick(name: str, version: str | None) -> dict[str, Any] | None:
        candidates = forks.get(canonical(name), [])
        if version is not None:
            candidates = [p for p in candidates if p.get("version") == version] or candidates
        for package in candidates:
            if holds(None, package.get("resolution-markers")):
                return package
        return candidates[0] if len(candidates) == 1 else None

    roots = [p for p in packages if {"editable", "virtual"} & set(p.get("source", {}))]
    if not roots:
        return [p for p in packages if holds(None, p.get("resolution-markers"))]
    chosen: dict[int, dict[str, Any]] = {}
    stack = list(roots)
    while stack:
        package = stack.pop()
        if id(package) in chosen:
            continue
        chosen[id(package)] = package
        edges = list(package.get("dependencies", []))
        if package in roots:
            edges += list(package.get("dev-dependencies", {}).get("dev", []))
        for edge in edges:
            if holds(edge.get("marker")):
                found = pick(edge["name"], edge.get("version"))
                if found is not None:
                    stack.append(found)
    return [p for p in packages if id(p) in chosen]


def _from_lock(path: Path, found: FromFile, arch: str) -> None:
    """A uv.lock: the Linux side of a universal lock, with its git, URL, path and private-registry sources."""
    for package in _lock_packages(_toml(path).get("package", []), _target_markers(arch)):
        name, version, source = package["name"], package.get("version", ""), package.get("source", {})
        where = source.get("editable") or source.get("directory") or source.get("path")
        if "virtual" in source:
            continue  # a workspace root that is not a package
        if where is not None:
            found.local.append(str((path.parent / where).resolve()))
        elif "git" in source:
            url, _, commit = str(source["git"]).partition("#")
            base, _, query = url.partition("?")
            subdirectory = urllib.parse.parse_qs(query).get("subdirectory", [""])[0]
            found.requirements.append(
                f"{name} @ git+{base}@{commit}" + (f"#subdirectory={subdirectory}" if subdirectory else "")
            )
        elif "url" in source:
            found.requirements.append(f"{name} @ {source['url']}")
            _lock_hashes(package, found)
        else:
            registry = str(source.get("registry", ""))
            if registry.startswith("http") and "pypi.org" not in registry and registry not in found.index_urls:
                found.index_urls.append(registry)
            found.requirements.append(f"{name}=={version}")
            _lock_hashes(package, found)


def _lock_hashes(package: dict[str, Any], found: FromFile) -> None:
    """A uv.lock package's file hashes (its sdist's and wheels'), kept for the requirement just added."""
    files = [package.get("sdist") or {}, *(package.get("wheels") or [])]
    hashes = [str(f["hash"]) for f in files if isinstance(f, dict) and f.get("hash")]
    if hashes:
        found.hashes[found.requirements[-1]] = hashes


def _local_with_extras(target: str, base: Path, found: FromFile, where: str) -> None:
    """A local package, ``./pkg[extra,...]`` included: the path to build, the extras' packages named."""
    match = re.fullmatch(r"(.+?)(?:\[([^\]]*)\])?", target.strip())
    path_text, extras = (match.group(1), match.group(2)) if match else (target, None)
    folder = (base / Path(path_text).expanduser()).resolve()
    found.local.append(str(folder))
    if not extras:
        return
    wanted = [e.strip() for e in extras.split(",") if e.strip()]
    try:
        optional = _toml(folder / "pyproject.toml").get("project", {}).get("optional-dependencies", {})
    except OSError:
        optional = {}
    for extra in wanted:
        if extra in optional:
            found.requirements += list(optional[extra])
        else:
            found.notes.append(f"{where}: the extra [{extra}] of {path_text} is not carried over: name its packages")


def _logical_lines(text: str) -> list[str]:
    """Lines as pip reads them: continuations joined, comments removed, ``${VAR}`` expanded."""
    text = re.sub(r"\\(\r?\n|\Z)", " ", text)
    out = []
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        line = re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: os.environ.get(m.group(1), m.group(0)), line)
        if line:
            out.append(line)
    return out


def from_file(
    path: Path, found: FromFile | None = None, seen: frozenset[Path] = frozenset(), *, arch: str = "x86_64"
) -> FromFile:
    """Requirements from a file the user names: requirements*.txt (with ``-r`` includes), uv.lock or
    pyproject.toml. Local directories (``-e ./pkg``, ``./pkg``, ``name @ file:///...``, a lock's editable
    or path sources, the project a pyproject.toml describes) are listed to be built into wheels."""
    found = FromFile() if found is None else found
    path = path.resolve()
    if path.name == "uv.lock":
        _from_lock(path, found, arch)
        return found
    if path.name == "pyproject.toml":
        data = _toml(path)
        found.requirements += list(data.get("project", {}).get("dependencies", []))
        if "build-system" in data:  # the project is a package: workers get it built, as a wheel
            found.local.append(str(path.parent))
        return found
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        option, value = "", ""
        if line.startswith("-"):
            match = re.match(r"(-[a-zA-Z]|--[a-z-]+)(?:\s*=\s*|\s+|$)(.*)", line)
            option, value = (match.group(1), match.group(2).strip()) if match else (line, "")
        if option in ("-r", "--requirement"):
            include = (path.parent / value).resolve()
            if include in seen:
                continue
            if not include.is_file():
                raise ConfigurationError(f"{path} includes {value} (-r), which does not exist: fix the path")
            from_file(include, found, seen | {path}, arch=arch)
        elif option in ("-e", "--editable") and "://" in value and not value.startswith("file:"):
            refuse_logins_in(value, path.name)
            found.requirements.append(value)  # a VCS checkout: installed (not editable) from its URL
        elif option in ("-e", "--editable"):
            _local_with_extras(_file_path(value) if value.startswith("file:") else value, path.parent, found, path.name)
        elif option in ("-i", "--index-url"):
            found.index_urls.insert(0, value)
            found.replaces_index = True
        elif option == "--extra-index-url":
            found.index_urls.append(value)
        elif option == "--require-hashes":
            pass  # workers check hashes too: with --require-hashes when every line they install has them
        elif option:
            found.notes.append(f"{path.name}: option {option} is not carried over")
        elif line.startswith((".", "/", "~")) or re.match(r"[A-Za-z]:[\\/]", line) or line.startswith("file:"):
            target = line.split(";", 1)[0].split(" --", 1)[0].strip()
            _local_with_extras(_file_path(target) if target.startswith("file:") else target, path.parent, found, "")
        elif " @ file:" in line:
            url = line.partition(" @ ")[2]
            found.local.append(str((path.parent / _file_path(url.split(";", 1)[0].strip())).resolve()))
        else:
            requirement = line.split(" --", 1)[0].strip()  # its --hash options are kept apart
            refuse_logins_in(requirement, path.name)
            found.requirements.append(requirement)
            hashes = re.findall(r"--hash[=\s]\s*([a-z0-9]+:[0-9a-fA-F]+)", line)
            if hashes:
                found.hashes.setdefault(requirement, []).extend(hashes)
    return found
