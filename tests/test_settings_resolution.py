"""One resolution of every setting: what `cloudburst config` reports is what the backend runs with.

Every registered key (the core's and every backend's), set by environment variable or in the
file, gives the same effective value to `cloudburst config --json` and to the backend's resolved
settings; a call beats the environment, which beats the file, which beats the default.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cloudburst
from cloudburst.backends.aws.fargate import FargateBackend
from cloudburst.backends.aws.settings import FargateSettings
from cloudburst.cli import main
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator
from cloudburst.emulator.identities import USER_NAME
from cloudburst.environment.recipe import tag
from cloudburst.environment.snapshot import snapshot

REQUIREMENTS_A = "requirements-a.txt"
REQUIREMENTS_B = "requirements-b.txt"
SECRET = "ssm:/cloudburst/secrets/"

#: two valid values for every key, as text (an environment variable, `config set`) and as resolved
SAMPLES: dict[str, tuple[str, Any, str, Any]] = {
    "workers": ("7", 7, "9", 9),
    "cpu": ("0.5", 0.5, "2", 2.0),
    "memory": ("3GB", "3GB", "512MB", "512MB"),
    "idle_timeout": ("300", 300.0, "45", 45.0),
    "region": ("eu-west-1", "eu-west-1", "us-west-2", "us-west-2"),
    "profile": ("team", "team", "other", "other"),
    "bucket": ("bucket-a", "bucket-a", "bucket-b", "bucket-b"),
    "cluster": ("cluster-a", "cluster-a", "cluster-b", "cluster-b"),
    "subnets": ("subnet-a,subnet-b", ["subnet-a", "subnet-b"], "subnet-c", ["subnet-c"]),
    "security_groups": ("sg-a", ["sg-a"], "sg-b,sg-c", ["sg-b", "sg-c"]),
    "assign_public_ip": ("false", False, "true", True),
    "execution_role_arn": (
        "arn:aws:iam::1:role/a",
        "arn:aws:iam::1:role/a",
        "arn:aws:iam::1:role/b",
        "arn:aws:iam::1:role/b",
    ),
    "worker_boundary_arn": (
        "arn:aws:iam::1:policy/a",
        "arn:aws:iam::1:policy/a",
        "arn:aws:iam::1:policy/b",
        "arn:aws:iam::1:policy/b",
    ),
    "task_role_arn": (
        "arn:aws:iam::1:role/t",
        "arn:aws:iam::1:role/t",
        "arn:aws:iam::1:role/u",
        "arn:aws:iam::1:role/u",
    ),
    "log_group": ("/a/logs", "/a/logs", "/b/logs", "/b/logs"),
    "build_role_arn": (
        "arn:aws:iam::1:role/build-a",
        "arn:aws:iam::1:role/build-a",
        "arn:aws:iam::1:role/build-b",
        "arn:aws:iam::1:role/build-b",
    ),
    "ecr_repository": ("images-a", "images-a", "images-b", "images-b"),
    "kms_key": (
        "arn:aws:kms:us-east-1:1:key/a",
        "arn:aws:kms:us-east-1:1:key/a",
        "arn:aws:kms:us-east-1:1:key/b",
        "arn:aws:kms:us-east-1:1:key/b",
    ),
    "image": ("python", "python", "repo/img:1", "repo/img:1"),
    "requirements": (REQUIREMENTS_A, REQUIREMENTS_A, REQUIREMENTS_B, REQUIREMENTS_B),  # made in tmp_path below
    "tags": ('{"project": "a"}', {"project": "a"}, '{"team": "b"}', {"team": "b"}),
    "secrets": (f'{{"TOKEN": "{SECRET}a"}}', {"TOKEN": f"{SECRET}a"}, f'{{"KEY": "{SECRET}b"}}', {"KEY": f"{SECRET}b"}),
    "spot": ("true", True, "false", False),
    "arch": ("arm64", "arm64", "amd64", "x86_64"),
    "ephemeral_storage": ("50", 50, "30", 30),
    "client_timeout": ("600", 600.0, "90", 90.0),
    "local_workers": ("2", 2, "3", 3),
    "detached": ("true", True, "false", False),
    "keep": ("yes", True, "no", False),
    "debug": ("on", True, "off", False),
    "lease_seconds": ("120", 120.0, "30", 30.0),
    "poll_interval": ("0.5", 0.5, "5", 5.0),
    "max_cost_per_job": ("12.5", 12.5, "3", 3.0),
    "cost_alert_threshold": ("1.5", 1.5, "2", 2.0),
    "auto_quota_request": ("true", True, "false", False),
    "on_quota_short": ("fail", "fail", "fit", "fit"),
    "cache_days": ("60", 60, "14", 14),
    "cache_namespace": ("team-a", "team-a", "nightly", "nightly"),
}
#: keys the backend reads as ``defaults()`` (what an Executor call leaves out), not as FargateSettings fields
DEFAULTS = ("workers", "cpu", "memory", "idle_timeout")
#: keys read where they are used (setup's lifecycle rule, the stage cache), not as FargateSettings fields
ELSEWHERE = ("cache_days", "cache_namespace")
#: keys kept only so that old files still load
UNUSED = {"task_role_arn": "each job has its own role; setup removes the old shared one"}


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No setting from this machine: an empty config folder, no CLOUDBURST_<KEY> variable."""
    monkeypatch.setenv("CLOUDBURST_CONFIG_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the requirements samples are relative to it
    for name in userconfig.all_keys():
        monkeypatch.delenv(f"CLOUDBURST_{name.upper()}", raising=False)
    for name in (REQUIREMENTS_A, REQUIREMENTS_B):
        (tmp_path / name).write_text("attrs\n")
    return tmp_path


def expected(name: str, value: Any, folder: Path) -> Any:
    return str((folder / value).resolve()) if name == "requirements" else value


def reported() -> dict[str, Any]:
    """What `cloudburst config --json` says: name -> (value, source)."""
    result = CliRunner().invoke(main, ["config", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {name: (v["value"], v["source"]) for name, v in json.loads(result.output).items()}


def used(name: str, call: dict[str, Any] | None = None) -> Any:
    """What the fargate backend runs with: its resolved settings, or the defaults an Executor call takes."""
    if name in DEFAULTS:
        return FargateBackend.defaults().get(name)
    if name in ELSEWHERE:
        return userconfig.lookup(name, call).value
    value = getattr(FargateSettings.resolve(call or {}), name)
    return list(value) if isinstance(value, tuple) else value


def test_the_samples_cover_every_registered_key() -> None:
    assert set(SAMPLES) == set(userconfig.all_keys())
    fields = set(FargateSettings.__dataclass_fields__)
    assert set(UNUSED) | set(DEFAULTS) | set(ELSEWHERE) | fields == set(userconfig.all_keys())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_env_and_file_give_config_and_the_backend_the_same_value(
    name: str, clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_raw, file_value, env_raw, env_value = SAMPLES[name]
    file_value, env_value = expected(name, file_value, clean), expected(name, env_value, clean)
    userconfig.set_value(name, file_raw)
    assert reported()[name] == (file_value, f"file {clean / 'config.toml'}")
    if name not in UNUSED:
        assert used(name) == file_value
    monkeypatch.setenv(f"CLOUDBURST_{name.upper()}", env_raw)  # the environment beats the file
    assert reported()[name] == (env_value, f"env CLOUDBURST_{name.upper()}")
    if name not in UNUSED:
        assert used(name) == env_value
    assert userconfig.lookup(name, {name: file_raw}) == userconfig.Value(name, file_value, "call")  # a call beats both
    if name not in UNUSED and name not in DEFAULTS:  # (the core keys' calls are the Executor's own arguments)
        assert used(name, {name: file_raw}) == file_value
    monkeypatch.delenv(f"CLOUDBURST_{name.upper()}")
    userconfig.unset_value(name)
    default = userconfig.all_keys()[name].default
    assert reported()[name] == (default, "default")
    if name not in UNUSED and name not in DEFAULTS:
        assert used(name) == default


def test_a_bad_value_in_the_environment_names_the_variable(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDBURST_ON_QUOTA_SHORT", "panic")
    with pytest.raises(cloudburst.ConfigurationError, match=r"environment variable CLOUDBURST_ON_QUOTA_SHORT: "):
        FargateSettings.resolve({})
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 1 and "CLOUDBURST_ON_QUOTA_SHORT" in result.output


def test_the_ecr_repository_from_the_environment_reaches_the_image_build(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = "team-images"  # the team's own repository, which an administrator lets the user read
    ecr, iam = emulator.admin("ecr"), emulator.admin("iam")
    uri = ecr.create_repository(repositoryName=repository)["repository"]["repositoryArn"]
    grant = {"Effect": "Allow", "Action": ["ecr:DescribeRepositories", "ecr:DescribeImages"], "Resource": uri}
    document = json.dumps({"Version": "2012-10-17", "Statement": [grant]})
    iam.put_user_policy(UserName=USER_NAME, PolicyName=repository, PolicyDocument=document)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [{"digest": "sha256:" + "7" * 64}],
    }
    # this environment's image, already there: found by its tag, no build
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag(snapshot()))
    digest = ecr.describe_images(repositoryName=repository)["imageDetails"][0]["imageDigest"]
    monkeypatch.setenv("CLOUDBURST_ECR_REPOSITORY", repository)
    try:
        assert reported()["ecr_repository"] == (repository, "env CLOUDBURST_ECR_REPOSITORY")
        assert cloudburst.map(abs, [-3], backend="fargate", workers=1, image=None, progress=False) == [3]
    finally:
        iam.delete_user_policy(UserName=USER_NAME, PolicyName=repository)
    ecs = emulator.admin("ecs")
    images = [
        ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["containerDefinitions"][0]["image"]
        for arn in ecs.list_task_definitions()["taskDefinitionArns"]
    ]
    assert any(image.endswith(f"/{repository}@{digest}") for image in images), images


def test_help_version_and_config_do_not_import_boto3(clean: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from cloudburst.cli import main
        for args in (["--help"], ["version"], ["config", "--json"], ["setup", "--help"]):
            result = CliRunner().invoke(main, args, catch_exceptions=False)
            assert result.exit_code == 0, (args, result.output)
        shown = CliRunner().invoke(main, ["--help"]).output
        assert all(name in shown for name in ("setup", "doctor", "teardown", "quota", "status", "logs", "env"))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore")))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_registered_backend_adds_its_keys_and_commands(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudburst import backends

    module = clean / "toybackend.py"
    module.write_text(
        textwrap.dedent(
            """
            import click
            from cloudburst.config.userconfig import Key, number

            KEYS = (Key("toy_speed", "toy", number(1, 10), 3, "how fast the toy goes"),)

            @click.command("toy-status")
            def toy_status():
                "Say how the toy is."
                click.echo("toy ok")

            COMMANDS = (toy_status,)

            def explain(exc):
                return None
            """
        )
    )
    monkeypatch.syspath_prepend(str(clean))
    backends.register("toy", "cloudburst.backends.local:LocalBackend", settings="toybackend:KEYS", cli="toybackend")
    try:
        monkeypatch.setenv("CLOUDBURST_TOY_SPEED", "7")
        assert reported()["toy_speed"] == (7.0, "env CLOUDBURST_TOY_SPEED")
        assert CliRunner().invoke(main, ["toy-status"]).output == "toy ok\n"
        with pytest.raises(cloudburst.ConfigurationError, match=r"toy_speed='11' must be a number from 1 to 10"):
            userconfig.set_value("toy_speed", "11")
    finally:
        backends.unregister("toy")
    assert "toy_speed" not in reported() and CliRunner().invoke(main, ["toy-status"]).exit_code != 0
