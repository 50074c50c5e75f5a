"""The environment snapshot and image recipe: pinned, reproducible tags, platform-only packages out."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

import cloudburst
from cloudburst.environment.indexes import strip_credentials
from cloudburst.environment.pins import BASE_IMAGES
from cloudburst.environment.recipe import build_context, dockerfile, tag
from cloudburst.environment.snapshot import Snapshot, index_credentials, snapshot


def test_snapshot_pins_what_is_installed() -> None:
    snap = snapshot()
    assert snap.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"cloudpickle=={metadata.version('cloudpickle')}" in snap.requirements
    names = {r.split("==")[0] for r in snap.requirements}
    assert not names & {"pip", "setuptools", "cloudburst"}  # the image brings its own
    assert all("==" in r for r in snap.requirements)


def test_same_environment_same_tag_one_change_new_tag() -> None:
    snap = snapshot()
    assert tag(snap) == tag(snapshot())
    changed = dataclasses.replace(snap, requirements=(*snap.requirements[:-1], "zzz-extra==1.0"))
    assert tag(changed) != tag(snap)
    assert tag(snap, arch="arm64") != tag(snap)
    assert tag(snap).startswith(f"py{snap.python}-x86_64-")


def test_golden_dockerfile() -> None:
    snap = Snapshot(python="3.11", requirements=("numpy==2.1.0",), local=("/home/me/mypkg",))
    assert dockerfile(snap) == (
        f"FROM public.ecr.aws/docker/library/python:3.11-slim-bookworm@{BASE_IMAGES['3.11']}\n"
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1\n"
        "COPY uv-requirements.txt /cloudburst/uv-requirements.txt\n"
        "RUN pip install --no-cache-dir --no-deps --require-hashes -r /cloudburst/uv-requirements.txt\n"
        "COPY requirements.txt /cloudburst/requirements.txt\n"
        "COPY wheels/ /cloudburst/wheels/\n"
        "RUN uv pip install --system --no-cache -r /cloudburst/requirements.txt /cloudburst/wheels/*.whl\n"
        "COPY cloudburst/ /cloudburst/lib/cloudburst/\n"
        "ENV PYTHONPATH=/cloudburst/lib\n"
        'CMD ["python", "-m", "cloudburst.worker"]\n'
    )
    with_git = dataclasses.replace(snap, requirements=("tool @ git+https://github.com/o/tool@abc123",), local=())
    assert "RUN apt-get update && apt-get install -y --no-install-recommends git" in dockerfile(with_git)
    assert "git" not in dockerfile(snap).replace("ENV", "")  # only when a requirement needs it


def test_requirement_files_are_honoured_and_platform_only_packages_left_out(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0  # arrays\n-r other.txt\npywin32==306\npyobjc-core==10.0\nrequests>=2\n")
    (tmp_path / "other.txt").write_text("scipy==1.14.0 --hash=sha256:00\n-r requirements.txt\n")  # a cycle, too
    snap = snapshot(reqs)
    assert snap.requirements == ("numpy==2.1.0", "requests>=2", "scipy==1.14.0")
    assert snap.left_out == ("pyobjc-core", "pywin32")
    assert any("only for macOS or Windows" in n for n in snap.notes)
    lock = tmp_path / "uv.lock"
    lock.write_text(
        'version = 1\n[[package]]\nname = "myproj"\nversion = "0.1.0"\nsource = { editable = "." }\n'
        'dependencies = [{ name = "helper" }, { name = "numpy" }]\n'
        '[[package]]\nname = "helper"\nversion = "0.2.0"\nsource = { directory = "libs/helper" }\n'
        '[[package]]\nname = "ws"\nversion = "0.0.0"\nsource = { virtual = "ws" }\n'
        '[[package]]\nname = "numpy"\nversion = "2.1.0"\nsource = { registry = "https://pypi.org/simple" }\n'
    )
    locked = snapshot(lock)
    assert locked.requirements == ("numpy==2.1.0",)
    assert locked.local == (str(tmp_path), str(tmp_path / "libs" / "helper"))  # the project and a path source
    project = tmp_path / "pyproject.toml"
    project.write_text('[project]\nname = "x"\ndependencies = ["pandas>=2", "appnope"]\n')
    assert snapshot(project).requirements == ("pandas>=2",) and snapshot(project).local == ()
    project.write_text(project.read_text() + '[build-system]\nrequires = ["hatchling"]\n')
    assert snapshot(project).local == (str(tmp_path),)  # a package: built into a wheel for the workers


def test_requirements_file_options_local_paths_and_indexes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):
        monkeypatch.delenv(name, raising=False)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "--index-url=https://reader:s3cr3t@corp.example/simple\n"
        "--extra-index-url https://more.example/simple\n"
        "--no-binary :all:\n"
        "-e ./pkg_a\n"
        "./pkg_b\n"
        "pkg-c @ file:///opt/src/pkg_c\n"
        "-e git+https://github.com/o/r.git#egg=r\n"
        "attrs==24.2.0\n"
    )
    snap = snapshot(reqs)
    assert snap.local == ("/opt/src/pkg_c", str(tmp_path / "pkg_a"), str(tmp_path / "pkg_b"))
    assert snap.requirements == ("attrs==24.2.0", "git+https://github.com/o/r.git#egg=r")
    assert snap.index_urls[:2] == ("https://corp.example/simple", "https://more.example/simple")
    assert not snap.extra_index and "corp.example" in snap.private_hosts
    assert any("option --no-binary is not carried over" in n for n in snap.notes)
    assert "s3cr3t" not in json.dumps(dataclasses.asdict(snap)) and "s3cr3t" not in dockerfile(snap)
    assert "machine corp.example login reader password s3cr3t" in index_credentials(snap)
    (tmp_path / "bad.txt").write_text("-r missing.txt\n")
    with pytest.raises(cloudburst.ConfigurationError, match=r"includes missing.txt \(-r\), which does not exist"):
        snapshot(tmp_path / "bad.txt")


def test_a_local_package_that_cannot_be_built_is_named_before_anything_runs(tmp_path: Path) -> None:
    gone = Snapshot(python="3.11", requirements=(), local=(str(tmp_path / "moved-away"),))
    with pytest.raises(cloudburst.ConfigurationError, match=r"moved-away cannot be shipped: it no longer exists"):
        build_context(gone, tmp_path / "context")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "no_such_backend"\n')
    with pytest.raises(
        cloudburst.ConfigurationError, match=r"could not build a wheel of the local package at .*broken"
    ):
        build_context(Snapshot(python="3.11", requirements=(), local=(str(broken),)), tmp_path / "context2")


def test_local_installs_are_listed_to_be_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "direct_url.json").write_text(json.dumps({"url": "file:///home/me/mypkg", "dir_info": {"editable": True}}))
    monkeypatch.syspath_prepend(str(tmp_path))
    snap = snapshot()
    assert "/home/me/mypkg" in snap.local
    assert not any(r.startswith("mypkg==") for r in snap.requirements)


def test_index_credentials_never_reach_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        strip_credentials("https://user:s3cret@pypi.example.com:8443/simple") == "https://pypi.example.com:8443/simple"
    )
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://bot:t0ken@private.example.com/simple")
    snap = snapshot()
    assert snap.index_urls == ("https://private.example.com/simple",)
    assert "t0ken" not in snap.requirements_txt() and "t0ken" not in dockerfile(snap)


def test_index_settings_come_from_pip_conf_and_logins_travel_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\n"
        "index-url = https://bot:t%40ken@pypi.corp.example/simple\n"
        "extra-index-url =\n    https://extra.example/simple\n    file:///opt/wheelhouse\n"
    )
    netrc = tmp_path / "netrc"
    netrc.write_text("machine extra.example login reader password n3trc\nmachine other.example login x password y\n")
    netrc.chmod(0o600)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("UV_DEFAULT_INDEX", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("NETRC", str(netrc))
    snap = snapshot()
    assert snap.index_urls == ("https://pypi.corp.example/simple", "https://extra.example/simple")
    assert not snap.extra_index  # pip.conf's index-url replaces PyPI
    assert snap.private_hosts == ("extra.example", "pypi.corp.example")
    assert any("file:///opt/wheelhouse is left out" in n for n in snap.notes)
    text = snap.requirements_txt()
    assert text.startswith(
        "--index-url https://pypi.corp.example/simple\n--extra-index-url https://extra.example/simple"
    )
    assert index_credentials() == (
        "machine pypi.corp.example login bot password t@ken\nmachine extra.example login reader password n3trc\n"
    )
    recipe = dockerfile(snap)
    assert "RUN --mount=type=secret,id=netrc,required=false NETRC=/run/secrets/netrc uv pip install" in recipe
    context = build_context(snap, tmp_path / "context")
    for path in context.rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            assert b"t@ken" not in body and b"t%40ken" not in body and b"n3trc" not in body, path
    rotated = tmp_path / "pip2.conf"  # a new token for the same indexes: the same image
    rotated.write_text(conf.read_text().replace("t%40ken", "n3w"))
    monkeypatch.setenv("PIP_CONFIG_FILE", str(rotated))
    assert tag(snapshot()) == tag(snap) and "n3w" in index_credentials()
    monkeypatch.setenv("UV_INDEX_URL", "https://uv.example/simple")  # the environment overrides pip.conf
    assert snapshot().index_urls[0] == "https://uv.example/simple"


def test_a_named_requirements_file_still_gets_the_worker_loops_own_packages(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"numpy==2.1.0\ncloudpickle=={metadata.version('cloudpickle')}\n")
    snap = snapshot(reqs)
    names = [r.split("==")[0] for r in snap.runtime]
    assert "boto3" in names and "tblib" in names and "cloudpickle" not in names  # already named: not twice
    assert all(r.split("==")[1] == metadata.version(r.split("==")[0]) for r in snap.runtime)
    assert snap.requirements_txt().count("cloudpickle") == 1
    assert any("added for the worker loop" in n for n in snap.notes)


def test_an_edited_local_checkout_gets_a_new_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "mypkg"
    (checkout / "mypkg").mkdir(parents=True)
    (checkout / "mypkg" / "__init__.py").write_text("VALUE = 1\n")
    info = tmp_path / "site" / "mypkg-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "direct_url.json").write_text(json.dumps({"url": checkout.as_uri(), "dir_info": {"editable": True}}))
    monkeypatch.syspath_prepend(str(info.parent))
    before = tag(snapshot())
    (checkout / "mypkg" / "__pycache__").mkdir()
    (checkout / "mypkg" / "__pycache__" / "x.pyc").write_bytes(b"noise")
    assert tag(snapshot()) == before  # caches do not count
    (checkout / "mypkg" / "__init__.py").write_text("VALUE = 2\n")
    assert tag(snapshot()) != before


def test_installs_from_vcs_urls_and_wheel_files_are_reproduced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def installed(name: str, direct: dict[str, object]) -> None:
        info = tmp_path / f"{name}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        (info / "direct_url.json").write_text(json.dumps(direct))

    installed("fromgit", {"url": "https://github.com/o/fromgit.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}})
    installed("fromweb", {"url": "https://files.example/fromweb-0.1.tar.gz", "archive_info": {}})
    wheel = tmp_path / "dist" / "fromwheel-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK")
    installed("fromwheel", {"url": wheel.as_uri(), "archive_info": {}})
    monkeypatch.syspath_prepend(str(tmp_path))
    snap = snapshot()
    assert "fromgit @ git+https://github.com/o/fromgit.git@abc123" in snap.requirements
    assert "fromweb @ https://files.example/fromweb-0.1.tar.gz" in snap.requirements
    assert str(wheel) in snap.local
    context = build_context(dataclasses.replace(snap, local=(str(wheel),)), tmp_path / "context")
    assert (context / "wheels" / wheel.name).read_bytes() == b"PK"  # shipped as it is


def test_requirement_files_as_pip_compile_and_uv_export_write_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORP_TOKEN", "tok3n")
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text(
        '[project]\nname = "proj"\nversion = "1"\n[project.optional-dependencies]\nplot = ["matplotlib>=3"]\n'
    )
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "# generated\n"
        "--extra-index-url https://ci:${CORP_TOKEN}@corp.example/simple\n"
        "anyio==4.4.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
        "idna==3.7\t# via anyio\n"
        "-e ./proj[plot]\n"
    )
    snap = snapshot(reqs)
    assert snap.requirements == ("anyio==4.4.0", "idna==3.7", "matplotlib>=3")
    assert snap.local == (str(tmp_path / "proj"),)
    assert "machine corp.example login ci password tok3n" in index_credentials(snap)
    assert "tok3n" not in snap.requirements_txt()


def test_a_login_inside_a_requirement_url_is_refused(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tool @ git+https://oauth2:glpat-SECRET@gitlab.example/o/tool.git@v1\n")
    with pytest.raises(cloudburst.ConfigurationError, match=r"carries a login in its URL") as info:
        snapshot(reqs)
    assert "glpat-SECRET" not in str(info.value)


def test_uv_lock_forks_git_url_and_private_registry_sources(tmp_path: Path) -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    lock = tmp_path / "uv.lock"
    lock.write_text(
        "version = 1\n"
        '[[package]]\nname = "numpy"\nversion = "1.0.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        "resolution-markers = [\"python_full_version < '3.0'\"]\n"
        '[[package]]\nname = "numpy"\nversion = "2.2.1"\nsource = { registry = "https://pypi.org/simple" }\n'
        "resolution-markers = [\"python_full_version >= '3.0' and sys_platform == 'linux'\"]\n"
        '[[package]]\nname = "numpy"\nversion = "2.2.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        "resolution-markers = [\"sys_platform == 'win32'\"]\n"
        '[[package]]\nname = "tool"\nversion = "0.3"\n'
        'source = { git = "https://github.com/o/tool?subdirectory=py&rev=main#0123abc" }\n'
        '[[package]]\nname = "blob"\nversion = "1.0"\nsource = { url = "https://files.example/blob-1.0.tar.gz" }\n'
        '[[package]]\nname = "secretsauce"\nversion = "4.2"\nsource = { registry = "https://corp.example/simple" }\n'
    )
    snap = snapshot(lock)
    assert snap.requirements == (
        "blob @ https://files.example/blob-1.0.tar.gz",
        "numpy==2.2.1",
        "secretsauce==4.2",
        "tool @ git+https://github.com/o/tool@0123abc#subdirectory=py",
    ), python
    assert "https://corp.example/simple" in snap.index_urls  # asked of its own registry, not of PyPI


def test_netrc_text_reads_back_and_unsafe_logins_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import netrc as netrc_module

    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("UV_INDEX", "furyidx=https://T0KEN@fury.example/simple internal=https://u:p@in.example/simple")
    snap = snapshot()
    assert snap.index_urls[:2] == ("https://fury.example/simple", "https://in.example/simple")
    text = index_credentials()
    assert text == "machine fury.example login T0KEN\nmachine in.example login u password p\n"
    if sys.version_info >= (3, 11):  # older netrc readers want a password in every entry (uv does not)
        written = tmp_path / "netrc"
        written.write_text(text)
        written.chmod(0o600)
        parsed = netrc_module.netrc(str(written))
        assert parsed.authenticators("fury.example")[0] == "T0KEN"  # type: ignore[index]
        assert parsed.authenticators("in.example") == ("u", "", "p")
    monkeypatch.setenv("UV_INDEX", "https://u:with%20space@in.example/simple")
    with pytest.raises(cloudburst.ConfigurationError, match=r"in.example has a space, quote or '#'"):
        index_credentials()


def test_the_tag_depends_on_contents_not_on_how_paths_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "requirements.txt").write_text("attrs==24.2.0\n")
    monkeypatch.chdir(tmp_path)
    assert tag(snapshot("requirements.txt")) == tag(snapshot(tmp_path / "requirements.txt"))
    wheel = tmp_path / "mine-0.1-py3-none-any.whl"
    wheel.write_bytes(b"one")
    (tmp_path / "requirements.txt").write_text(f"attrs==24.2.0\n{wheel}\n")
    before = tag(snapshot("requirements.txt"))
    wheel.write_bytes(b"two")  # rebuilt: the same name, new contents
    assert tag(snapshot("requirements.txt")) != before


def test_runtime_packages_give_way_to_the_users_pins(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("botocore==1.30.0\n")
    runtime = snapshot(reqs).runtime
    assert "boto3" in runtime  # unpinned: the resolver picks one that fits botocore 1.30
    assert f"tblib=={metadata.version('tblib')}" in runtime


@pytest.mark.parametrize(
    ("wheel_name", "arch", "refused"),
    [
        ("fast-1.0-cp311-cp311-macosx_11_0_arm64.whl", "x86_64", True),
        ("fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "arm64", True),
        ("fast-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "x86_64", False),
        ("fast-1.0-cp311-cp311-manylinux_2_17_aarch64.whl", "arm64", False),
        ("fast-1.0-py3-none-any.whl", "arm64", False),
    ],
)
def test_local_wheels_must_run_on_the_workers(wheel_name: str, arch: str, refused: bool, tmp_path: Path) -> None:
    wheel = tmp_path / wheel_name
    wheel.write_bytes(b"PK")
    snap = Snapshot(python="3.11", requirements=(), local=(str(wheel),))
    if refused:
        with pytest.raises(
            cloudburst.ConfigurationError, match=rf"has compiled code.*not for the workers \(Linux {arch}\)"
        ):
            build_context(snap, tmp_path / "context", arch=arch)
        assert not list((tmp_path / "context" / "wheels").glob("*.whl"))
    else:
        assert (build_context(snap, tmp_path / "context", arch=arch) / "wheels" / wheel_name).exists()


def test_logins_in_any_url_requirement_and_ssh_urls_are_refused(tmp_path: Path) -> None:
    project = tmp_path / "pyproject.toml"
    project.write_text(
        '[project]\nname = "x"\ndependencies = ["tool @ git+https://oauth2:glpat-S3@gl.example/t.git"]\n'
    )
    with pytest.raises(cloudburst.ConfigurationError, match=r"carries a login in its URL") as info:
        snapshot(project)
    assert "glpat-S3" not in str(info.value)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("tool @ git+ssh://git@github.com/o/tool.git@v1\n")
    with pytest.raises(cloudburst.ConfigurationError, match=r"fetched over SSH.*use its https:// URL"):
        snapshot(reqs)


def test_file_urls_with_hashes_localhost_and_a_last_continuation(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "pkg-a @ file:///opt/src/pkg_a --hash=sha256:00\n-e file://localhost/opt/src/pkg_b\nattrs==24.2.0 \\"
    )
    snap = snapshot(reqs)
    assert snap.local == ("/opt/src/pkg_a", "/opt/src/pkg_b")
    assert snap.requirements == ("attrs==24.2.0",)


def test_a_universal_lock_is_read_for_the_workers_cpu(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text(
        "version = 1\n"
        '[[package]]\nname = "torch"\nversion = "2.5.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        "resolution-markers = [\"platform_machine == 'x86_64'\"]\n"
        '[[package]]\nname = "torch"\nversion = "2.4.1"\nsource = { registry = "https://pypi.org/simple" }\n'
        "resolution-markers = [\"platform_machine == 'aarch64'\"]\n"
    )
    assert snapshot(lock).requirements == ("torch==2.5.0",)
    assert snapshot(lock, arch="arm64").requirements == ("torch==2.4.1",)


def test_a_lock_is_walked_from_its_project_along_the_edges_a_linux_worker_takes(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text(
        "version = 1\n"
        '[[package]]\nname = "proj"\nversion = "0.1.0"\nsource = { editable = "." }\n'
        "dependencies = [\n"
        '  { name = "numpy" },\n'
        '  { name = "colorama", marker = "sys_platform == \'win32\'" },\n'
        '  { name = "uvloop", marker = "sys_platform == \'linux\'" },\n'
        "]\n"
        '[package.dev-dependencies]\ndev = [{ name = "pytest" }]\n'
        '[[package]]\nname = "numpy"\nversion = "2.1.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        '[[package]]\nname = "colorama"\nversion = "0.4.6"\nsource = { registry = "https://pypi.org/simple" }\n'
        '[[package]]\nname = "uvloop"\nversion = "0.21.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        '[[package]]\nname = "pytest"\nversion = "8.3.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        'dependencies = [{ name = "iniconfig" }]\n'
        '[[package]]\nname = "iniconfig"\nversion = "2.0.0"\nsource = { registry = "https://pypi.org/simple" }\n'
        '[[package]]\nname = "orphan"\nversion = "1.0"\nsource = { registry = "https://pypi.org/simple" }\n'
    )
    snap = snapshot(lock)
    assert snap.requirements == ("iniconfig==2.0.0", "numpy==2.1.0", "pytest==8.3.0", "uvloop==0.21.0")
    assert snap.local == (str(tmp_path),)
