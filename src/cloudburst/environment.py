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

from . import __version__

__all__ = [
    "PLATFORM_ONLY",
    "Snapshot",
    "build_context",
    "dockerfile",
    "index_credentials",
    "snapshot",
    "stock_image",
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

    def requirements_txt(self) -> str:
        lines = []
        if self.index_urls:
            first, *rest = self.index_urls
            lines.append(f"--{'extra-' if self.extra_index else ''}index-url {first}")
            lines += [f"--extra-index-url {url}" for url in rest]
        return "\n".join([*lines, *self.requirements, *self.runtime]) + "\n"


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
    """pip's configuration files, lowest precedence first (global, user, site, ``PIP_CONFIG_FILE``)."""
    import platformdirs

    xdg = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg)] + [Path("/etc/pip.conf")]
    home = Path(environ.get("HOME", str(Path.home())))
    files += [home / ".pip" / "pip.conf", Path(platformdirs.user_config_dir("pip")) / "pip.conf"]
    files += [Path(sys.prefix) / "pip.conf"]
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
        extra += environ.get(name, "").split()
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
        if entry and entry[0] and entry[2]:
            found[host] = (entry[0], entry[2])
    return found


def _indexes(
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> tuple[tuple[str, ...], bool, tuple[str, ...], dict[str, tuple[str, str]], list[str]]:
    """(index URLs without credentials, extra?, private hosts, credentials by host, notes)."""
    environ = os.environ if environ is None else environ
    primary, extra, notes = _index_settings(environ)
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
    urls = tuple(dict.fromkeys(strip_credentials(u) for u in primary[:1] + extra))
    return urls, not primary, tuple(sorted(credentials)), credentials, notes


def index_credentials(environ: dict[str, str] | None = None) -> str:
    """The index logins as a netrc file's text ("" when no index needs one). A secret: never logged."""
    _, _, _, credentials, _ = _indexes(environ)
    return "".join(f"machine {host} login {user} password {secret}\n" for host, (user, secret) in credentials.items())


_SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "build", "dist", "node_modules", ".tox"}
)


def _tree_digest(paths: tuple[str, ...]) -> str:
    """A content hash of local source trees, so an edited checkout gets a new image."""
    digest = hashlib.sha256()
    for root in paths:
        base = Path(root)
        if not base.exists():
            digest.update(f"missing:{root}".encode())
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info"))
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(folder) / name
                digest.update(path.relative_to(base).as_posix().encode() + b"\0")
                try:
                    with open(path, "rb") as fh:
                        while chunk := fh.read(1 << 20):
                            digest.update(chunk)
                except OSError:
                    continue
    return digest.hexdigest()[:16]


def _runtime(named: set[str]) -> tuple[str, ...]:
    """cloudburst's own runtime packages, pinned to the versions here, that the requirements do not name."""
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
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue  # e.g. tomli on Python >= 3.11
    return tuple(pinned)


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
    index_urls, extra_index, private_hosts, _, index_notes = _indexes()
    notes += index_notes
    if private_hosts:
        notes.append(f"credentials for {', '.join(private_hosts)} are passed as a secret, never stored in the image")
    runtime = _runtime(named)
    if runtime and requirements is not None:
        notes.append(f"added for the worker loop: {', '.join(runtime)}")
    local_paths = tuple(sorted(set(local)))
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
    )


def base_image(python: str) -> str:
    return f"public.ecr.aws/docker/library/python:{python}-slim"


def stock_image(python: str) -> str:
    """The no-build fallback's image: stock Python of this minor version; the snapshot installs at start."""
    return base_image(python)


def tag(snap: Snapshot, *, arch: str = "x86_64") -> str:
    """The image tag: a hash of everything that goes into the image."""
    recipe = {
        "snapshot": asdict(snap) | {"notes": []},
        "base": base_image(snap.python),
        "arch": arch,
        "cloudburst": __version__,
        "dockerfile": dockerfile(snap),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return f"py{snap.python}-{arch}-{digest[:16]}"


def dockerfile(snap: Snapshot) -> str:
    """The image recipe: the user never writes one."""
    # The index logins, when there are any, are a build secret mounted for the install steps only.
    secret = "--mount=type=secret,id=netrc,required=false NETRC=/run/secrets/netrc " if snap.private_hosts else ""
    lines = ["# syntax=docker/dockerfile:1"] if snap.private_hosts else []
    lines += [
        f"FROM {base_image(snap.python)}",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1",
        "RUN pip install --no-cache-dir uv",
        "COPY requirements.txt /cloudburst/requirements.txt",
        f"RUN {secret}uv pip install --system --no-cache -r /cloudburst/requirements.txt",
    ]
    if snap.local:
        lines += [
            "COPY wheels/ /cloudburst/wheels/",
            f"RUN {secret}uv pip install --system --no-cache /cloudburst/wheels/*.whl",
        ]
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
