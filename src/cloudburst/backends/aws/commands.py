"""The AWS backend's commands: ``cloudburst setup``, ``doctor``, ``teardown``, ``selftest``, ``quota``, ``status``,
``logs``, ``cleanup`` and ``env``, added to the root group through the backend registry.

This module is imported whenever ``cloudburst`` runs, so it must not import boto3: each command
imports the modules that use it as it runs. ``explain`` turns botocore's errors into one line with
the fix.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ...backends import get_backend
from ...config import userconfig
from ...config.options import parse_memory
from ...core.words import plural
from ...environment.recipe import dockerfile, tag
from ...environment.snapshot import snapshot
from ...environment.wheels import missing_arm64_wheels, require_arm64_wheels
from .policies import Names
from .user_policies import setup_policy, user_policy

__all__ = ["COMMANDS", "explain"]

_BOTOCORE_FIXES = {
    "NoRegionError": "no AWS region is set: run `cloudburst setup --region REGION` (or set AWS_DEFAULT_REGION)",
    "NoCredentialsError": "no AWS credentials found: configure them (`aws configure`, AWS_PROFILE, or the "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables)",
    "PartialCredentialsError": "{exc}: the AWS credentials are incomplete; configure them again (`aws configure`)",
    "ProfileNotFound": "{exc}: name a profile of ~/.aws/config with --profile or `cloudburst config set profile NAME`",
    "TokenRetrievalError": "{exc}: your AWS SSO session has ended; log in again with `aws sso login`",
    "SSOTokenLoadError": "{exc}: log in with `aws sso login`",
    "UnauthorizedSSOTokenError": "{exc}: log in again with `aws sso login`",
    "CredentialRetrievalError": "{exc}: check the credential source named in your AWS profile",
    "EndpointConnectionError": "{exc}: check the network connection (and AWS_ENDPOINT_URL, if set)",
}


def explain(exc: BaseException) -> str | None:
    """The problem and its fix, for an error of botocore's (the root command prints its first line); else None."""
    botocore = sys.modules.get("botocore.exceptions")  # loaded only if boto3 was used, so only then raised
    if botocore is None or not isinstance(exc, (botocore.BotoCoreError, botocore.ClientError)):
        return None
    for kind in type(exc).__mro__:
        if kind.__name__ in _BOTOCORE_FIXES:
            return _BOTOCORE_FIXES[kind.__name__].format(exc=exc)
    return f"AWS: {exc}"


def _confirm(yes: bool) -> Any:
    if yes:
        return None
    if not sys.stdin.isatty():
        raise click.UsageError("not a terminal: pass --yes to confirm")
    return lambda question: click.confirm(question, default=True)


@click.command("setup")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--region", default=None, help="AWS region (default: boto3's own resolution)")
@click.option("--profile", default=None, help="AWS profile (default: boto3's own resolution)")
@click.option("--subnets", default=None, help="comma-separated subnets (default: the default VPC's)")
@click.option(
    "--kms-key",
    default=None,
    help="KMS key for job keys and the bucket: 'create' (a new customer-managed key), a key id, ARN or alias/... "
    "(yours), or 'default' (AWS-managed keys). Without it: the configured key, if any",
)
@click.option(
    "--print-user-policy", is_flag=True, help="print the IAM policy a cloudburst user needs here, change nothing"
)
@click.option(
    "--print-setup-policy",
    is_flag=True,
    help="print the IAM policy that setup and teardown need besides the user policy, change nothing",
)
def setup_command(
    yes: bool,
    region: str | None,
    profile: str | None,
    subnets: str | None,
    kms_key: str | None,
    print_user_policy: bool,
    print_setup_policy: bool,
) -> None:
    """Create or repair what the fargate backend needs, once per account and region."""
    from .setup import setup

    if print_user_policy or print_setup_policy:
        _print_policy(region, profile, "user" if print_user_policy else "setup")
        return
    chosen = [s.strip() for s in subnets.split(",") if s.strip()] if subnets else None
    setup(region=region, profile=profile, subnets=chosen, kms_key=kms_key, confirm=_confirm(yes), echo=click.echo)


def _print_policy(region: str | None, profile: str | None, which: str) -> None:
    """The user or setup policy for the account of the current credentials and the resolved region, as JSON."""
    from .clients import client, translate

    sts: Any = client("sts", region, profile)
    with translate("STS", "GetCallerIdentity"):
        arn = str(sts.get_caller_identity()["Arn"])
    names = Names(arn.split(":")[4], region or sts.meta.region_name, arn.split(":")[1])
    click.echo(json.dumps((user_policy if which == "user" else setup_policy)(names), indent=2))


@click.command("doctor")
@click.option("--region", default=None)
@click.option("--profile", default=None)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def doctor_command(region: str | None, profile: str | None, as_json: bool) -> None:
    """Check credentials, every resource, roles, network, quotas and image build tools."""
    from .setup import doctor

    report = doctor(region=region, profile=profile, echo=(lambda _: None) if as_json else click.echo)
    if as_json:
        click.echo(json.dumps([vars(step) for step in report.steps], indent=1))
    if report.problems:
        sys.exit(1)


@click.command("teardown")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--region", default=None)
@click.option("--profile", default=None)
def teardown_command(yes: bool, region: str | None, profile: str | None) -> None:
    """Remove everything setup made (found by its tag cloudburst=true), and nothing else."""
    from .setup import teardown

    teardown(region=region, profile=profile, confirm=_confirm(yes), echo=click.echo)


@click.command("selftest")
@click.option("--region", default=None)
@click.option("--profile", default=None)
@click.option("--max-cost", type=click.FloatRange(min=0.001), default=0.05, show_default=True, help="USD cap per job")
def selftest_command(region: str | None, profile: str | None, max_cost: float) -> None:
    """Run a tiny job end to end and check the image, workers, logs, isolation, cost and clean-up."""
    from .selftest import selftest

    click.echo(f"{'check':10} {'result':7} {'time':>9} {'cost':>10}")
    report = selftest(region=region, profile=profile, max_cost=max_cost, echo=click.echo)
    failed = [c.name for c in report.checks if not c.ok]
    click.echo(f"selftest: {'FAILED: ' + ', '.join(failed) if failed else 'all checks ok'}; cost {report.cents:.3f} ¢")
    if failed:
        sys.exit(1)


@click.command("quota")
@click.option("--request", "request", type=float, default=None, help="ask AWS to raise the quota to this many vCPUs")
@click.option("--spot", is_flag=True, help="the Fargate Spot quota rather than On-Demand")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def quota_command(request: float | None, spot: bool, as_json: bool) -> None:
    """Show the Fargate vCPU quotas, what the cluster uses, and pending increase requests."""
    from .quota import pending_requests, read_quota, request_increase

    region, profile = userconfig.lookup("region").value, userconfig.lookup("profile").value
    cluster = userconfig.lookup("cluster").value or "cloudburst"
    if request is not None:
        made = request_increase(region, profile, spot=spot, value=request)
        code, ident, status = made.get("QuotaCode"), made.get("Id"), made.get("Status")
        click.echo(f"asked AWS for {plural(request, 'vCPU')} ({code}): request {ident}, {status}")
    quotas = [read_quota(region, profile, cluster, spot=kind) for kind in (False, True)]
    pending = pending_requests(region, profile)
    rows: list[dict[str, Any]] = [
        {"quota": q.name, "code": q.code, "vcpus": q.value, "in_use": q.in_use, "counted": q.counted, "free": q.free}
        for q in quotas
        if q is not None
    ]
    if as_json:
        click.echo(json.dumps({"quotas": rows, "pending_requests": pending}, indent=1, default=str))
        return
    if not rows:
        click.echo("the Fargate quotas could not be read (servicequotas:GetServiceQuota)")
    for r in rows:
        click.echo(
            f"{r['quota']:18} {plural(r['vcpus'], 'vCPU'):>14}   {r['in_use']:>6,g} in use ({r['counted']})   "
            f"{r['free']:>8,g} free"
        )
    for p in pending:
        wanted, status = p.get("DesiredValue"), p.get("Status")
        click.echo(f"pending: {p.get('QuotaCode')} → {plural(float(wanted or 0), 'vCPU')} ({status}, {p.get('Id')})")


def _account() -> tuple[Any, Any, str, str]:

    values = userconfig.resolve(names=("region", "profile", "bucket", "cluster"))
    bucket, cluster = values["bucket"].value, values["cluster"].value
    if not bucket or not cluster:
        raise click.ClickException("cloudburst is not set up here: run `cloudburst setup`")
    return values["region"].value, values["profile"].value, bucket, cluster


def _hourly() -> float:
    """USD per hour of one worker of the configured size (what `cloudburst status` bills jobs at)."""
    cpu = float(userconfig.lookup("cpu").value)
    memory = userconfig.lookup("memory")
    mib = parse_memory(memory.value) if memory.source != "default" else None  # unset memory follows cpu
    return get_backend("fargate").worker_price(cpu, mib, region=userconfig.lookup("region").value).hourly


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status_command(as_json: bool) -> None:
    """Running and recent jobs: workers by state, tasks waiting and running, cost so far."""
    from .ops import find_jobs

    region, profile, bucket, cluster = _account()
    jobs = find_jobs(region, profile, bucket, cluster)
    hourly = _hourly()
    rows = [view.as_dict(hourly) for view in jobs.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    if not rows:
        click.echo("no jobs in this account and region")
    for r in rows:
        workers = ", ".join(f"{n} {state.lower()}" for state, n in sorted(r["workers"].items())) or "no workers"
        age = r["heartbeat_age_seconds"]
        client_state = (
            "detached" if r["detached"] else ("client silent" if age is None or age > 300 else "client alive")
        )
        click.echo(
            f"{r['job_id'][:20]:22}{workers:30} {plural(r['tasks_waiting'], 'task')} waiting, "
            f"{r['tasks_running']} running; {plural(r['results_waiting'], 'result')} waiting; ${r['cost_usd']:.4f}; "
            f"{client_state}"
        )


@click.command("logs")
@click.argument("job_id")
@click.option("--task", "task", type=int, default=None, help="only lines about this task")
@click.option("--worker", "worker", default=None, help="only this worker (ECS task id or its prefix)")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines")
@click.option("--tail", type=int, default=None, help="only the last N lines")
def logs_command(job_id: str, task: int | None, worker: str | None, follow: bool, tail: int | None) -> None:
    """Print the CloudWatch logs of a job's workers."""
    from .ops import find_jobs, log_lines

    region, profile, bucket, cluster = _account()
    group = userconfig.lookup("log_group").value
    jobs = find_jobs(region, profile, bucket, cluster)
    matches = [v for j, v in jobs.items() if j.startswith(job_id) or job_id.startswith(j)]
    if not matches:
        raise click.ClickException(f"no job {job_id!r} here; `cloudburst status` lists them")
    ids = [str(t["taskArn"]).rsplit("/", 1)[-1] for t in matches[0].tasks]
    ids = [i for i in ids if worker is None or i.startswith(worker)]
    since: int | None = None
    while True:
        lines = log_lines(region, profile, group, ids, tail=tail, since=since)
        for stamp, worker_id, line in lines:
            if task is None or f"task {task}," in line or f"task {task} " in line:
                click.echo(f"[{worker_id[:12]}] {line}")
            since = stamp + 1
        if not follow:
            return
        tail = None
        time.sleep(2)


@click.command("cleanup")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--older-than", type=float, default=3600, help="seconds of client silence that make a leftover")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def cleanup_command(yes: bool, older_than: float, as_json: bool) -> None:
    """Find workers, queues, data and keys left by dead clients, and remove them."""
    from .ops import cleanup, find_jobs, leftovers

    region, profile, bucket, cluster = _account()
    found = leftovers(find_jobs(region, profile, bucket, cluster), older_than)
    if not found:
        click.echo(json.dumps([]) if as_json else "nothing left behind")
        return
    if not as_json:
        for view in found:
            queues, workers = plural(len(view.queues), "queue"), plural(len(view.tasks), "worker")
            click.echo(f"leftover job {view.job_id[:20]}: {queues}, {workers}")
    ask = _confirm(yes)
    if ask is not None and not ask(f"Remove {plural(len(found), 'leftover job')}?"):
        raise click.ClickException("nothing removed")
    report = {view.job_id: cleanup(view, region, profile, bucket, cluster) for view in found}
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        for job, removed in report.items():
            click.echo(f"removed for {job[:20]}: {', '.join(removed) or 'nothing'}")


_REQUIREMENTS_HELP = "requirements*.txt, uv.lock or pyproject.toml (default: what is installed here)"


@click.group("env")
def env_group() -> None:
    """The worker image: this environment's packages, built once, found again by its tag."""


@env_group.command("show")
@click.option(
    "--requirements", type=click.Path(exists=True), default=None, help="requirements*.txt, uv.lock or pyproject.toml"
)
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def env_show(requirements: str | None, arch: str, as_json: bool) -> None:
    """What the image would hold, its tag and its Dockerfile (with --arch arm64: which packages lack wheels)."""
    snap = snapshot(requirements, arch=arch)
    missing: list[str] = []
    notes = list(snap.notes)
    if arch == "arm64":
        missing, wheel_notes = missing_arm64_wheels(snap)
        notes += wheel_notes
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tag": tag(snap, arch=arch),
                    "python": snap.python,
                    "source": snap.source,
                    "requirements": snap.requirements,
                    "runtime": snap.runtime,
                    "local": snap.local,
                    "left_out": snap.left_out,
                    "index_urls": snap.index_urls,
                    "private_hosts": snap.private_hosts,
                    "notes": notes,
                    **({"missing_arm64_wheels": missing} if arch == "arm64" else {}),
                },
                indent=1,
            )
        )
        return
    click.echo(
        f"tag {tag(snap, arch=arch)}: Python {snap.python}, {plural(len(snap.requirements), 'package')} from "
        f"{snap.source}"
    )
    for note in notes:
        click.echo(f"  note: {note}")
    if arch == "arm64":
        click.echo(f"  ARM64 wheels missing for: {', '.join(missing)}" if missing else "  ARM64 wheels: all found")
    click.echo(dockerfile(snap), nl=False)


@env_group.command("build")
@click.option(
    "--requirements", type=click.Path(exists=True), default=None, help="requirements*.txt, uv.lock or pyproject.toml"
)
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), default="x86_64")
@click.option(
    "--stock-python",
    is_flag=True,
    help="no image build: upload the environment for workers on the stock Python image to install as they start",
)
def env_build(requirements: str | None, arch: str, stock_python: bool) -> None:
    """Find or build this environment's image, and make it the workers' image."""
    from .images import ensure_bundle, ensure_image

    region, profile, bucket, _ = _account()
    snap = snapshot(requirements, arch=arch)
    if arch == "arm64":
        require_arm64_wheels(snap)
    if requirements:
        userconfig.set_value("requirements", str(Path(requirements).resolve()))
        click.echo(f"requirements = {Path(requirements).resolve()} (saved)")
    if stock_python:
        bundle = ensure_bundle(snap, region=region, profile=profile, bucket=bucket, arch=arch, echo=click.echo)
        userconfig.set_value("image", "python")
        click.echo(f"environment bundle {bundle.split('#')[0]}")
        click.echo("image = python (saved: workers on stock Python install the bundle as they start)")
        return
    uri = ensure_image(
        snap,
        region=region,
        profile=profile,
        repository=str(userconfig.lookup("ecr_repository").value),
        bucket=bucket,
        role_arn=str(userconfig.lookup("build_role_arn").value),
        arch=arch,
        echo=click.echo,
    )
    userconfig.set_value("image", uri)
    click.echo(f"image = {uri} (saved)")


@env_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def env_list(as_json: bool) -> None:
    """Worker images in the ECR repository and environment bundles in S3, newest first."""
    from .images import list_bundles, list_images

    region, profile, bucket, _ = _account()
    images = list_images(region, profile, str(userconfig.lookup("ecr_repository").value))
    bundles = list_bundles(region, profile, bucket)
    if as_json:
        click.echo(json.dumps({"images": images, "bundles": bundles}, indent=1, default=str))
        return
    for image in images:
        size = image.get("imageSizeInBytes", 0) / 1e6
        tags = ",".join(image.get("imageTags", [])) or "<untagged>"
        click.echo(f"image  {tags:50} {size:8.1f} MB  {image.get('imagePushedAt', '')}")
    for bundle in bundles:
        name = bundle["Key"].removeprefix("envs/").removesuffix(".zip")
        click.echo(f"bundle {name:50} {bundle.get('Size', 0) / 1e6:8.1f} MB  {bundle.get('LastModified', '')}")


@env_group.command("prune")
@click.option("--keep", type=int, default=5, help="how many of the newest images (and bundles) to keep")
def env_prune(keep: int) -> None:
    """Delete old worker images from ECR and old environment bundles from S3."""
    from .images import prune_bundles, prune_images

    region, profile, bucket, _ = _account()
    gone = prune_images(region, profile, str(userconfig.lookup("ecr_repository").value), keep)
    click.echo(f"deleted {plural(len(gone), 'image')}" + (f": {', '.join(gone)}" if gone else ""))
    bundles = prune_bundles(region, profile, bucket, keep)
    click.echo(f"deleted {plural(len(bundles), 'bundle')}" + (f": {', '.join(bundles)}" if bundles else ""))


#: what the root group adds (see cloudburst.backends.Registration.cli)
COMMANDS = (
    setup_command,
    doctor_command,
    teardown_command,
    selftest_command,
    quota_command,
    status_command,
    logs_command,
    cleanup_command,
    env_group,
)
