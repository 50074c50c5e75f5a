"""Package indexes workers install from: ``pip.conf`` and ``PIP_*``/``UV_*`` settings, carried over without
credentials (``https://user:token@host/simple`` becomes ``https://host/simple``). The logins, and any ``~/.netrc``
entry for an index host, are kept apart and travel as a netrc file mounted for the install step only (a build
secret, or an encrypted parameter ECS hands to the container): never in a layer, a task definition or a log.
"""

from __future__ import annotations

import configparser
import ipaddress
import netrc
import os
import re
import sys
import urllib.parse
from pathlib import Path

import platformdirs

from ..errors import ConfigurationError

__all__ = ["indexes", "netrc_text", "strip_credentials"]


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


def _pip_config_files(environ: dict[str, str] | os._Environ[str]) -> list[Path]:
    """pip's configuration files, lowest precedence first (global, user, site, ``PIP_CONFIG_FILE``),
    where pip looks for them on Linux, macOS and Windows."""
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


def indexes(
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
    """One netrc entry, refusing a login netrc cannot carry."""
    for value in (user, secret):
        if any(c.isspace() or c in "\"'#" for c in value):
            raise ConfigurationError(
                f"the login for the package index {host} has a space, quote or '#' in it, which cannot be passed on "
                "to workers as a netrc entry: use a token without them"
            )
    return f"machine {host}" + (f" login {user}" if user else "") + (f" password {secret}" if secret else "") + "\n"


def netrc_text(credentials: dict[str, tuple[str, str]]) -> str:
    """The logins ``{host: (user, password)}`` as a netrc file's text ("" when there are none). A secret."""
    return "".join(_netrc_line(host, user, secret) for host, (user, secret) in credentials.items())
