"""The no-build fallback's container entrypoint: install the snapshot with uv, then run the worker loop.

With ``image="python"`` a Fargate worker starts on the stock Python image, which has
neither cloudburst nor your packages. ECS runs this file's source as
``python -c`` (it uses the standard library only)::

    pip install uv ─► uv pip install boto3 (both pinned by version and sha256, --require-hashes)
        ─► fetch the environment bundle from S3 (requirements, local wheels, cloudburst itself) and
        check its sha256 ─► uv pip install -r requirements.txt + the wheels ─► exec python -m cloudburst.worker

It reads three variables of its own, named below (they are not the worker's wire variables, which it
passes on untouched): ``CLOUDBURST_BUNDLE`` is ``s3://bucket/envs/<tag>.zip#<sha256>``; the digest is
the client's own hash of the bundle it built, part of the task definition it
registers, so a bundle that was changed after upload is refused (whatever the
object's metadata says). Index logins, when the snapshot needs them, arrive as
``CLOUDBURST_NETRC`` from an encrypted parameter (an ECS secret) and are
written to a private file for uv; they are never printed, and the worker does not see them.
``CLOUDBURST_ROOT`` is where the bundle is installed (``/cloudburst`` when unset).
The uv and boto3 pins (``cloudburst.environment.pins``) and the exit code of a failed install
(``cloudburst.protocol.exitcodes``) are written into this source by ``script()``, which is what the task
definition runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import zipfile
from typing import Any

#: requirements files (``name==version --hash=sha256:...``) for uv and for boto3 with its dependencies:
#: empty here, filled in from ``cloudburst.environment.pins`` by ``script()``
UV_PINS = ""
BOTO3_PINS = ""
#: the exit code of an environment that cannot be installed (``protocol.exitcodes.EXIT_ENVIRONMENT``): filled in
#: by ``script()``; the client stops starting workers at the first one, as every other would fail the same way
EXIT_ENVIRONMENT = 1
#: this file's own variables, set by the task definition (``taskdef``): the bundle to install, ``s3://...#sha256``
BUNDLE_VARIABLE = "CLOUDBURST_BUNDLE"
#: package index logins (netrc text), an ECS secret; for the install only
NETRC_VARIABLE = "CLOUDBURST_NETRC"
#: where the bundle is installed (default ``/cloudburst``)
ROOT_VARIABLE = "CLOUDBURST_ROOT"


class _InstallFailed(Exception):
    pass


def _say(message: str) -> None:
    print(f"cloudburst-bootstrap: {message}", file=sys.stderr, flush=True)


def _run(what: str, args: list[str], env: dict[str, str]) -> None:
    """Run an install step; once more after a failure (a network blip), then give up."""
    for attempt in (1, 2):
        started = time.monotonic()
        if subprocess.run(args, env=env, check=False).returncode == 0:
            _say(f"{what}: {time.monotonic() - started:.1f} s")
            return
        if attempt == 1:
            _say(f"{what} failed; trying once more")
            time.sleep(2)
    raise _InstallFailed(f"{what} failed twice; its output is above")


def script() -> str:
    """This file's source with the pins filled in: what an ``image="python"`` container runs as ``python -c``.
    (Called by the client, where cloudburst is installed; the container needs the standard library only.)"""
    from pathlib import Path

    from ...environment import pins  # not at the top: the container runs this file without cloudburst
    from ...protocol import exitcodes

    source = Path(__file__).read_text(encoding="utf-8")
    for name, placeholder, value in (
        ("UV_PINS", '""', pins.requirements_text(pins.UV)),
        ("BOTO3_PINS", '""', pins.requirements_text(pins.BOTO3)),
        ("EXIT_ENVIRONMENT", "1", exitcodes.EXIT_ENVIRONMENT),
    ):
        line = f"\n{name} = {placeholder}\n"
        assert line in source, f"bootstrap.py lost its {name} line"
        source = source.replace(line, f"\n{name} = {value!r}\n", 1)
    return source


def _pinned(root: str, name: str, text: str) -> str:
    """A requirements file of pins, for ``--require-hashes``."""
    if not text:
        raise _InstallFailed(f"this bootstrap has no {name}: run it as cloudburst registers it (bootstrap.script())")
    path = os.path.join(root, f"{name.lower()}.txt")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _bucket_owner(bucket: str, boto3: Any) -> str:
    """The account in cloudburst's bucket name (``cloudburst-<account>-<region>``), else this task's own."""
    parts = bucket.split("-")
    if len(parts) > 2 and parts[0] == "cloudburst" and len(parts[1]) == 12 and parts[1].isdigit():
        return parts[1]
    return str(boto3.client("sts").get_caller_identity()["Account"])


def main() -> None:
    try:
        _install_and_run()
    except _InstallFailed as exc:
        _say(f"the environment could not be installed: {exc}")
        sys.exit(EXIT_ENVIRONMENT)


def _install_and_run() -> None:
    bundle = os.environ[BUNDLE_VARIABLE]
    location, _, expected = bundle.partition("#")
    bucket, _, key = location.removeprefix("s3://").partition("/")
    root = os.environ.get(ROOT_VARIABLE, "/cloudburst")
    os.makedirs(root, exist_ok=True)
    env = dict(os.environ)
    env.pop(NETRC_VARIABLE, None)
    netrc_text = os.environ.get(NETRC_VARIABLE, "")
    if netrc_text:
        path = os.path.join(root, "netrc")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(netrc_text)
        env["NETRC"] = path
        _say(f"package index logins for {netrc_text.count('machine ')} host(s) passed to uv")
    started = time.monotonic()
    # uv and boto3 are pinned by version and hash: an index serving other bytes for them is refused
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    _run("installing uv", [*pip, "--require-hashes", "-r", _pinned(root, "UV_PINS", UV_PINS)], env)
    uv = [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", sys.executable]
    if sys.prefix == sys.base_prefix:
        uv.append("--system")
    _run("installing boto3", [*uv, "--require-hashes", "-r", _pinned(root, "BOTO3_PINS", BOTO3_PINS)], env)

    body = _fetch_bundle(bucket, key, expected)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        archive.extractall(root)
    requirements = os.path.join(root, "requirements.txt")
    with open(requirements, encoding="utf-8") as fh:
        if "git+" in fh.read() and not shutil.which("git"):  # the stock image has no git
            apt = "apt-get update -qq && apt-get install -y -qq --no-install-recommends git"
            _run("installing git", ["sh", "-c", apt], env)
    wheels = os.path.join(root, "wheels")
    found = (
        sorted(os.path.join(wheels, n) for n in os.listdir(wheels) if n.endswith(".whl"))
        if os.path.isdir(wheels)
        else []
    )
    # One resolution for everything, local wheels included, with the same indexes.
    _run("installing the environment", [*uv, "-r", requirements, *found], env)
    _say(f"environment installed in {time.monotonic() - started:.1f} s; starting the worker")
    if netrc_text:  # the logins were for the install only: user code does not see them
        os.remove(env.pop("NETRC"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "cloudburst.worker"], env)


def _fetch_bundle(bucket: str, key: str, expected: str) -> bytes:
    """The environment bundle's bytes, read from S3 (once more after a network failure) and checked."""
    import boto3  # installed just above
    import botocore.exceptions

    for attempt in (1, 2):
        try:
            owner = _bucket_owner(bucket, boto3)  # a bucket re-created by another account is not read
            body = boto3.client("s3").get_object(Bucket=bucket, Key=key, ExpectedBucketOwner=owner)["Body"].read()
            break
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            fix = {
                "AccessDenied": "the workers' role may predate image='python': run `cloudburst setup` again",
                "NoSuchKey": "it was deleted (`cloudburst env prune`?): start the job again to upload it",
            }.get(code, "see the error above")
            raise _InstallFailed(f"could not read the environment bundle s3://{bucket}/{key} ({code}): {fix}") from exc
        except botocore.exceptions.BotoCoreError as exc:  # no connection, no credentials: once more, then stop
            if attempt == 2:
                raise _InstallFailed(f"could not reach the environment bundle s3://{bucket}/{key}: {exc}") from exc
            time.sleep(2)
    if hashlib.sha256(body).hexdigest() != expected:
        raise _InstallFailed(f"the bundle s3://{bucket}/{key} changed after it was uploaded; refusing to run it")
    return bytes(body)


if __name__ == "__main__":
    main()
