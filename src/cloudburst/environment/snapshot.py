"""A snapshot of the local Python environment: what workers need installed.

::

    snapshot()  ─► Python version + installed distributions, pinned (or a requirements file,
                   uv.lock or pyproject.toml you name: ``lockfiles``) ─► local/editable installs
                   listed to be built into wheels ─► platform-only packages left out, with a note
                ─► index settings without credentials (``indexes``)

The image recipe made from a snapshot (tag, Dockerfile, build context) is in ``recipe``. The index logins
travel apart from the snapshot, as a netrc file (``index_credentials``): never in a layer, a task definition
or a log.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.parse
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .indexes import indexes, netrc_text, strip_credentials
from .lockfiles import FromFile, canonical, from_file, refuse_logins_in, requirement_name

__all__ = ["PLATFORM_ONLY", "Snapshot", "index_credentials", "index_logins", "snapshot"]

#: Distributions that exist only for macOS or Windows: they cannot install on a Linux worker.
PLATFORM_ONLY = frozenset(
    {"appnope", "pywin32", "pywin32-ctypes", "pywinpty", "wmi", "comtypes", "pyobjc", "macholib", "winshell"}
)
_PLATFORM_PREFIXES = ("pyobjc-", "pywin32-")
_NEVER_SHIPPED = frozenset({"pip", "setuptools", "wheel", "uv", "cloudburst"})  # the image brings its own


@dataclass(frozen=True)
class Snapshot:
    """What workers install: pinned requirements, local packages to build, indexes (without logins)."""

    python: str  # "3.11"
    requirements: tuple[str, ...]  # "name==version", sorted
    local: tuple[str, ...] = ()  # paths of local or editable installs, to build into wheels
    left_out: tuple[str, ...] = ()  # platform-only distributions, not installable on Linux
    index_urls: tuple[str, ...] = ()  # without credentials; the first replaces PyPI when it is not extra
    source: str = "installed distributions"
    notes: tuple[str, ...] = field(default_factory=tuple)
    runtime: tuple[str, ...] = ()  # what the worker loop itself imports, when the requirements do not name it
    extra_index: bool = True  # index_urls add to PyPI rather than replace it
    private_hosts: tuple[str, ...] = ()  # index hosts that need credentials (supplied as a netrc secret)
    local_digest: str = ""  # content hash of the local and editable source trees
    requirements_file: str = ""  # the file named, if any (not part of the tag: only its contents count)
    hashes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (requirement, ("sha256:...", ...)) from the user's lock

    @property
    def require_hashes(self) -> bool:
        """Whether every line workers install carries hashes: then uv runs with ``--require-hashes``."""
        hashed = dict(self.hashes)
        return bool(hashed) and not self.local and all(r in hashed for r in (*self.requirements, *self.runtime))

    def requirements_txt(self) -> str:
        """The workers' requirements file: indexes, then the requirements with the lock's hashes (which uv
        checks wherever they are given), ``--require-hashes`` first when every line has them."""
        lines = ["--require-hashes"] if self.require_hashes else []
        if self.index_urls:
            first, *rest = self.index_urls
            lines.append(f"--{'extra-' if self.extra_index else ''}index-url {first}")
            lines += [f"--extra-index-url {url}" for url in rest]
        hashed = dict(self.hashes)
        for requirement in (*self.requirements, *self.runtime):
            lines.append(" ".join([requirement, *(f"--hash={h}" for h in hashed.get(requirement, ()))]))
        return "\n".join(lines) + "\n"


def _direct_url(dist: metadata.Distribution) -> dict[str, object] | None:
    """What pip recorded of where a distribution came from (PEP 610), if anything."""
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def index_logins(snap: Snapshot | None = None, environ: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """``{host: (user, password)}`` for the snapshot's indexes, its requirements file's included."""
    found = from_file(Path(snap.requirements_file)) if snap is not None and snap.requirements_file else None
    _, _, _, credentials, _ = indexes(
        environ,
        file_indexes=found.index_urls if found else None,
        file_replaces=found.replaces_index if found else False,
    )
    return credentials


def index_credentials(snap: Snapshot | None = None, environ: dict[str, str] | None = None) -> str:
    """The index logins as a netrc file's text ("" when no index needs one). A secret: never logged."""
    return netrc_text(index_logins(snap, environ))


_SKIPPED_DIRS = frozenset({"__pycache__", "venv", "build", "dist", "node_modules"})  # and every .hidden one


def _tree_digest(paths: tuple[str, ...]) -> str:
    """A content hash of local source trees, so an edited checkout gets a new image."""
    digest = hashlib.sha256()

    def add(path: Path) -> None:
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            pass

    for root in paths:
        base = Path(root)
        if not base.exists():
            digest.update(f"missing:{root}".encode())
            continue
        if base.is_file():  # a wheel or an sdist
            digest.update(base.name.encode() + b"\0")
            add(base)
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(
                d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
            )
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(folder) / name
                digest.update(path.relative_to(base).as_posix().encode() + b"\0")
                add(path)
    return digest.hexdigest()[:16]


def _runtime(named: set[str]) -> tuple[str, ...]:
    """cloudburst's own runtime packages that the requirements do not name: pinned to the versions here,
    unless the requirements name one of their dependencies (``botocore`` for ``boto3``, say), when the
    resolver picks a version that fits."""
    wanted = ["boto3"]  # workers talk to AWS
    try:
        for requirement in metadata.requires("cloudburst") or []:
            if "extra ==" not in requirement:
                wanted.append(requirement_name(requirement))
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        wanted += ["click", "cloudpickle", "platformdirs", "tblib", "tomli-w", "tqdm", "zstandard"]
    pinned = []
    for name in dict.fromkeys(canonical(n) for n in wanted):
        if name in named:
            continue
        try:
            version = metadata.version(name)
            needs = {requirement_name(r) for r in metadata.requires(name) or []}
        except metadata.PackageNotFoundError:
            continue  # e.g. tomli on Python >= 3.11
        pinned.append(name if needs & named else f"{name}=={version}")
    return tuple(pinned)


def _platform_only(name: str) -> bool:
    return name in PLATFORM_ONLY or name.startswith(_PLATFORM_PREFIXES)


def _pinned(name: str, version: str, url: str, direct: dict[str, object]) -> str:
    """The requirement that installs a distribution as it is here: the very commit of a VCS checkout, the
    archive it came from, or its version."""
    vcs = direct.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") and vcs.get("commit_id"):
        subdirectory = direct.get("subdirectory")
        return f"{name} @ {vcs['vcs']}+{strip_credentials(url)}@{vcs['commit_id']}" + (
            f"#subdirectory={subdirectory}" if subdirectory else ""
        )
    if url.startswith(("http://", "https://")):
        return f"{name} @ {strip_credentials(url)}"  # an archive from a URL
    return f"{name}=={version}"


def _installed(left_out: list[str]) -> FromFile:
    """What this interpreter has installed, pinned; local installs listed to be built, platform-only ones
    added to ``left_out``."""
    found = FromFile()
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"] or "")
        if not name or name in _NEVER_SHIPPED:
            continue
        if _platform_only(name):
            left_out.append(name)
            continue
        direct = _direct_url(dist) or {}
        url = str(direct.get("url", ""))
        if url.startswith("file://"):
            found.local.append(urllib.parse.unquote(url.removeprefix("file://")))
        else:
            found.requirements.append(_pinned(name, dist.version, url, direct))
    return found


def _kept(requirements: list[str], left_out: list[str]) -> tuple[list[str], set[str]]:
    """(the requirements workers install, their names): platform-only ones go to ``left_out``, and what the
    image brings its own of is dropped."""
    kept, named = [], set()
    for requirement in requirements:
        name = requirement_name(requirement)
        if _platform_only(name):
            left_out.append(name)
        elif name not in _NEVER_SHIPPED:
            kept.append(requirement)
            named.add(name)
    return kept, named


def snapshot(requirements: str | Path | None = None, *, arch: str = "x86_64") -> Snapshot:
    """The environment workers need: from a file you name, else from what this interpreter has installed.
    ``arch`` picks the side of a universal uv.lock that a Linux worker on that CPU installs."""
    left_out: list[str] = []
    if requirements is not None:
        found = from_file(Path(requirements), arch=arch)
        kind = Path(requirements).name if Path(requirements).name in ("uv.lock", "pyproject.toml") else "requirements"
        source = f"{kind} ({Path(requirements)})"
    else:
        found, source = _installed(left_out), "installed distributions"
    for requirement in found.requirements:  # from a requirements file, a pyproject.toml, a lock or an extra
        refuse_logins_in(requirement, str(requirements or "the installed distributions"))
    kept, named = _kept(found.requirements, left_out)
    notes = found.notes
    if left_out:
        notes.append(f"left out, as they exist only for macOS or Windows: {', '.join(sorted(set(left_out)))}")
    if found.local:
        notes.append(f"built into wheels and shipped: {', '.join(sorted(found.local))}")
    index_urls, extra_index, private_hosts, _, index_notes = indexes(
        file_indexes=found.index_urls, file_replaces=found.replaces_index
    )
    notes += index_notes
    if private_hosts:
        notes.append(f"credentials for {', '.join(private_hosts)} are passed as a secret, never stored in the image")
    runtime = _runtime(named)
    if runtime and requirements is not None:
        notes.append(f"added for the worker loop: {', '.join(runtime)}")
    local_paths = tuple(sorted(set(found.local)))
    requirements_kept = tuple(sorted(set(kept), key=str.lower))
    kept_hashes = tuple((r, tuple(dict.fromkeys(found.hashes[r]))) for r in requirements_kept if r in found.hashes)
    if kept_hashes:
        notes.append(_hash_note(kept, dict(kept_hashes), runtime, local_paths))
    return Snapshot(
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        requirements=requirements_kept,
        local=local_paths,
        left_out=tuple(sorted(set(left_out))),
        index_urls=index_urls,
        source=source,
        notes=tuple(notes),
        runtime=runtime,
        extra_index=extra_index,
        private_hosts=private_hosts,
        local_digest=_tree_digest(local_paths) if local_paths else "",
        requirements_file=str(Path(requirements).resolve()) if requirements is not None else "",
        hashes=kept_hashes,
    )


def _hash_note(
    kept: list[str], hashed: dict[str, tuple[str, ...]], runtime: tuple[str, ...], local: tuple[str, ...]
) -> str:
    """Say how the lock's hashes are enforced on workers, and what keeps ``--require-hashes`` off."""
    missing = [r for r in (*kept, *runtime) if r not in hashed]
    if not missing and not local:
        return "hashes from the lock are enforced on workers (--require-hashes)"
    what = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    reasons = ([f"no hashes for {what}"] if missing else []) + (["local packages are built here"] if local else [])
    return f"hashes from the lock are checked on workers where given; --require-hashes is off: {'; '.join(reasons)}"
