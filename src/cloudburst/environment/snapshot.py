"""A snapshot of the local Python environment: what workers need installed, and the image recipe.

::

    snapshot()  ─► Python version + installed distributions, pinned (or a requirements file,
                   uv.lock or pyproject.toml you name) ─► local/editable installs listed to be
                   built into wheels ─► platform-only packages left out, with a note
    tag()       ─► sha256 of everything that goes into the image (lock, Python, base, arch,
                   cloudburst version): the same environment gives the same tag
    dockerfile()─► official slim Python base of the same minor version, uv, the worker entrypoint

Index settings (``PIP_*``/``UV_*`` variables and ``pip.conf``) are carried over without credentials:
``https://user:token@host/simple`` becomes ``https://host/simple``. The credentials, and any ``~/.netrc``
entry for an index host, travel separately as a netrc file that is mounted for the install step only (a
build secret, or an encrypted parameter ECS hands to the container): never in a layer, a task definition
or a log.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import netrc
import os
import re
import sys
import urllib.parse
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__

__all__ = [
    "PLATFORM_ONLY",
    "Snapshot",
    "base_image",
    "build_context",
    "build_wheel",
    "dockerfile",
    "index_credentials",
    "index_logins",
    "needs_git",
    "snapshot",
    "strip_credentials",
    "tag",
]

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


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or ""


@dataclass(frozen=True)
class Snapshot:
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
    text = dist.read_text("direct_url.json")
    if not text:
        return None
    try:
        loaded = json.loads(text)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _pip_config_files(environ: dict[str, str] | os._Environ[str]) -> list[Path]:
    """pip's configuration files, lowest precedence first (global, user, site, ``PIP_CONFIG_FILE``),
    where pip looks for them on Linux, macOS and Windows."""
    import platformdirs

    name = "pip.ini" if sys.platform == "win32" else "pip.conf"
    home = Path(environ.get("HOME", str(Path.home())))
    if sys.platform == "win32":
        files = [Path(environ.get("PROGRAMDATA", "C:\\ProgramData")) / "pip" / name]
        user = [home / "pip" / name, Path(environ.get("APPDATA", str(home))) / "pip" / name]
    else:
        xdg = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
        files = [Path(d) / "pip" / name for d in reversed(xdg)] + [Path("/etc") / name]
        config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        user = [home / ".pip" / name, config_home / "pip" / name]  # pip reads these on macOS too
        if sys.platform == "darwin":
            user.append(Path(platformdirs.user_config_dir("pip")) / name)
    files += [*user, Path(sys.prefix) / name]
    if environ.get("PIP_CONFIG_FILE") and environ["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return list(dict.fromkeys(f for f in files if f.is_file()))


def _index_settings(
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """(primary index URLs, extra index URLs, notes) from ``pip.conf`` and ``PIP_*``/``UV_*`` variables,
    credentials included: the caller strips them."""
    environ = os.environ if environ is None else environ
    primary: list[str] = []
    extra: list[str] = []
    for path in _pip_config_files(environ):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "index-url"):
                primary = parser.get(section, "index-url").split()
            if parser.has_option(section, "extra-index-url"):
                extra += parser.get(section, "extra-index-url").split()
    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):  # later ones win, as uv reads them
        if environ.get(name):
            primary = environ[name].split()
    for name in ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX"):
        # uv names indexes as name=url in UV_INDEX
        extra += [re.sub(r"^[A-Za-z0-9_.-]+=(?=[a-z+]+://)", "", u) for u in environ.get(name, "").split()]
    notes = []
    reachable: list[list[str]] = [[], []]
    for kept, urls in zip(reachable, (primary, extra), strict=True):
        for url in urls:
            if url.startswith(("http://", "https://")):
                kept.append(url)
            else:
                notes.append(f"index {url} is left out: a local path, not reachable from workers")
    return reachable[0], reachable[1], notes


def _netrc_entries(hosts: list[str], environ: dict[str, str] | os._Environ[str]) -> dict[str, tuple[str, str]]:
    """This user's ``~/.netrc`` logins for the index hosts (pip and uv both read netrc)."""
    path = environ.get("NETRC") or str(Path(environ.get("HOME", str(Path.home()))) / ".netrc")
    try:
        parsed = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return {}
    found = {}
    for host in hosts:
        entry = parsed.authenticators(host)
        if entry and (entry[0] or entry[2]):
            found[host] = (entry[0] or "", entry[2] or "")
    return found


def _indexes(
    environ: dict[str, str] | os._Environ[str] | None = None,
    *,
    file_indexes: list[str] | None = None,
    file_replaces: bool = False,
) -> tuple[tuple[str, ...], bool, tuple[str, ...], dict[str, tuple[str, str]], list[str]]:
    """(index URLs without credentials, extra?, private hosts, credentials by host, notes).

    A requirements file's own ``--index-url`` (``file_replaces``: the first of ``file_indexes``) wins
    over the environment's; its ``--extra-index-url`` lines add to it."""
    environ = os.environ if environ is None else environ
    primary, extra, notes = _index_settings(environ)
    if file_indexes:
        if file_replaces:
            primary, extra = file_indexes[:1], extra + file_indexes[1:]
        else:
            extra = extra + file_indexes
    credentials: dict[str, tuple[str, str]] = {}
    for url in primary + extra:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname and (parts.username or parts.password):
            credentials[parts.hostname] = (
                urllib.parse.unquote(parts.username or ""),
                urllib.parse.unquote(parts.password or ""),
            )
    hosts = [_host(u) for u in primary + extra]
    for host, login in _netrc_entries([h for h in hosts if h not in credentials], environ).items():
        credentials[host] = login
    _require_https(primary + extra, credentials)
    urls = tuple(dict.fromkeys(strip_credentials(u) for u in primary[:1] + extra))
    return urls, not primary, tuple(sorted(credentials)), credentials, notes


def _require_https(urls: list[str], credentials: dict[str, tuple[str, str]]) -> None:
    """An index that needs a login is reached over https only: over http:// the login would cross the network
    in clear, from every worker. A loopback host is the one exception: nothing crosses a network."""
    import ipaddress

    from ..errors import ConfigurationError

    for url in urls:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if parts.scheme == "http" and host in credentials and not loopback:
            raise ConfigurationError(
                f"the package index {strip_credentials(url)} needs a login, and http:// would send it unencrypted "
                f"from every worker: use https://{parts.netloc.rpartition('@')[2]}{parts.path}"
            )


def _netrc_line(host: str, user: str, secret: str) -> str:
    from ..errors import ConfigurationError

    for value in (user, secret):
        if any(c.isspace() or c in "\"'#" for c in value):
            raise ConfigurationError(
                f"the login for the package index {host} has a space, quote or '#' in it, which cannot be passed on "
                "to workers as a netrc entry: use a token without them"
            )
    return f"machine {host}" + (f" login {user}" if user else "") + (f" password {secret}" if secret else "") + "\n"


def index_logins(snap: Snapshot | None = None, environ: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """``{host: (user, password)}`` for the snapshot's indexes, its requirements file's included."""
    found = _from_file(Path(snap.requirements_file)) if snap is not None and snap.requirements_file else None
    _, _, _, credentials, _ = _indexes(
        environ,
        file_indexes=found.index_urls if found else None,
        file_replaces=found.replaces_index if found else False,
    )
    return credentials


def index_credentials(snap: Snapshot | None = None, environ: dict[str, str] | None = None) -> str:
    """The index logins as a netrc file's text ("" when no index needs one). A secret: never logged."""
    credentials = index_logins(snap, environ)
    return "".join(_netrc_line(host, user, secret) for host, (user, secret) in credentials.items())


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
                wanted.append(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        wanted += ["click", "cloudpickle", "platformdirs", "tblib", "tomli-w", "tqdm", "zstandard"]
    pinned = []
    for name in dict.fromkeys(_canonical(n) for n in wanted):
        if name in named:
            continue
        try:
            version = metadata.version(name)
            needs = {_canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in metadata.requires(name) or []}
        except metadata.PackageNotFoundError:
            continue  # e.g. tomli on Python >= 3.11
        pinned.append(name if needs & named else f"{name}=={version}")
    return tuple(pinned)


def _toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    loaded: dict[str, Any] = tomllib.loads(path.read_text())
    return loaded


@dataclass
class _FromFile:
    requirements: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)  # directories to build into wheels
    index_urls: list[str] = field(default_factory=list)  # with credentials, as written
    replaces_index: bool = False
    notes: list[str] = field(default_factory=list)
    hashes: dict[str, list[str]] = field(default_factory=dict)  # requirement: ["sha256:...", ...]


def _file_path(url: str) -> str:
    """The local path a ``file:`` URL names (drive letters included on Windows)."""
    import urllib.request

    parts = urllib.parse.urlsplit(url.split(" --", 1)[0].strip())
    local = parts.netloc in ("", "localhost")
    return urllib.request.url2pathname(parts.path if local else f"//{parts.netloc}{parts.path}")


def _refuse_logins_in(requirement: str, where: str) -> None:
    """A login inside a requirement's URL would be copied into the image: refuse it, saying what to do."""
    from ..errors import ConfigurationError

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
    import platform

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
    from packaging.markers import InvalidMarker, Marker

    def holds(marker: str | None, markers: list[str] | None = None) -> bool:
        try:
            if marker is not None:
                return bool(Marker(marker).evaluate(target | {"extra": ""}))
            return not markers or any(Marker(m).evaluate(target | {"extra": ""}) for m in markers)
        except InvalidMarker:
            return True

    forks: dict[str, list[dict[str, Any]]] = {}
    for package in packages:
        forks.setdefault(_canonical(package["name"]), []).append(package)

    def pick(name: str, version: str | None) -> dict[str, Any] | None:
        candidates = forks.get(_canonical(name), [])
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


def _from_lock(path: Path, found: _FromFile, arch: str) -> None:
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


def _lock_hashes(package: dict[str, Any], found: _FromFile) -> None:
    """A uv.lock package's file hashes (its sdist's and wheels'), kept for the requirement just added."""
    files = [package.get("sdist") or {}, *(package.get("wheels") or [])]
    hashes = [str(f["hash"]) for f in files if isinstance(f, dict) and f.get("hash")]
    if hashes:
        found.hashes[found.requirements[-1]] = hashes


def _local_with_extras(target: str, base: Path, found: _FromFile, where: str) -> None:
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


def _from_file(
    path: Path, found: _FromFile | None = None, seen: frozenset[Path] = frozenset(), *, arch: str = "x86_64"
) -> _FromFile:
    """Requirements from a file the user names: requirements*.txt (with ``-r`` includes), uv.lock or
    pyproject.toml. Local directories (``-e ./pkg``, ``./pkg``, ``name @ file:///...``, a lock's editable
    or path sources, the project a pyproject.toml describes) are listed to be built into wheels."""
    found = _FromFile() if found is None else found
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
                from ..errors import ConfigurationError

                raise ConfigurationError(f"{path} includes {value} (-r), which does not exist: fix the path")
            _from_file(include, found, seen | {path}, arch=arch)
        elif option in ("-e", "--editable") and "://" in value and not value.startswith("file:"):
            _refuse_logins_in(value, path.name)
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
            _refuse_logins_in(requirement, path.name)
            found.requirements.append(requirement)
            hashes = re.findall(r"--hash[=\s]\s*([a-z0-9]+:[0-9a-fA-F]+)", line)
            if hashes:
                found.hashes.setdefault(requirement, []).extend(hashes)
    return found


def snapshot(requirements: str | Path | None = None, *, arch: str = "x86_64") -> Snapshot:
    """The environment workers need: from a file you name, else from what this interpreter has installed.
    ``arch`` picks the side of a universal uv.lock that a Linux worker on that CPU installs."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    local: list[str] = []
    left_out: list[str] = []
    notes: list[str] = []
    file_indexes: list[str] = []
    replaces_index = False
    hashes: dict[str, list[str]] = {}
    if requirements is not None:
        from_file = _from_file(Path(requirements), arch=arch)
        found, local, notes, hashes = from_file.requirements, from_file.local, from_file.notes, from_file.hashes
        file_indexes, replaces_index = from_file.index_urls, from_file.replaces_index
        kind = Path(requirements).name if Path(requirements).name in ("uv.lock", "pyproject.toml") else "requirements"
        source = f"{kind} ({Path(requirements)})"
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
            vcs = direct.get("vcs_info") if direct else None
            if isinstance(vcs, dict) and vcs.get("vcs") and vcs.get("commit_id"):
                subdirectory = direct.get("subdirectory") if direct else None
                found.append(  # the very commit
                    f"{canonical} @ {vcs['vcs']}+{strip_credentials(url)}@{vcs['commit_id']}"
                    + (f"#subdirectory={subdirectory}" if subdirectory else "")
                )
                continue
            if url.startswith(("http://", "https://")):
                found.append(f"{canonical} @ {strip_credentials(url)}")  # an archive from a URL
                continue
            found.append(f"{canonical}=={dist.version}")
    for requirement in found:  # from a requirements file, a pyproject.toml, a lock or an extra
        _refuse_logins_in(requirement, str(requirements or "the installed distributions"))
    kept = []
    named = set()
    for requirement in found:
        name = _canonical(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        if name in PLATFORM_ONLY or name.startswith(_PLATFORM_PREFIXES):
            left_out.append(name)
        elif name not in _NEVER_SHIPPED:
            kept.append(requirement)
            named.add(name)
    if left_out:
        notes.append(f"left out, as they exist only for macOS or Windows: {', '.join(sorted(set(left_out)))}")
    if local:
        notes.append(f"built into wheels and shipped: {', '.join(sorted(local))}")
    index_urls, extra_index, private_hosts, _, index_notes = _indexes(
        file_indexes=file_indexes, file_replaces=replaces_index
    )
    notes += index_notes
    if private_hosts:
        notes.append(f"credentials for {', '.join(private_hosts)} are passed as a secret, never stored in the image")
    runtime = _runtime(named)
    if runtime and requirements is not None:
        notes.append(f"added for the worker loop: {', '.join(runtime)}")
    local_paths = tuple(sorted(set(local)))
    kept_hashes = tuple((r, tuple(dict.fromkeys(hashes[r]))) for r in sorted(set(kept), key=str.lower) if r in hashes)
    if kept_hashes:
        notes.append(_hash_note(kept, dict(kept_hashes), runtime, local_paths))
    return Snapshot(
        python=python,
        requirements=tuple(sorted(set(kept), key=str.lower)),
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


def base_image(python: str) -> str:
    """The official slim image, on a named Debian release: its glibc (2.36) is what the ARM64 check assumes.
    Built images start from it; ``image="python"`` workers run it as it is. Named by its digest
    (``cloudburst.environment.pins``), so a re-pushed tag is never pulled."""
    from .pins import BASE_IMAGES

    if python not in BASE_IMAGES:
        from ..errors import ConfigurationError

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
    from .pins import UV, requirements_text

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
    import importlib.util
    import shutil
    import subprocess

    from ..errors import ConfigurationError

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
    from packaging.utils import parse_wheel_filename

    from ..errors import ConfigurationError

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
    import shutil

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
