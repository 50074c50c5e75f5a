"""``setup`` and ``doctor``: every step in order, making and repairing (setup) or only looking (doctor)."""

from __future__ import annotations

from collections.abc import Callable

from ....config import userconfig
from ....errors import CloudError
from ..policies import build_policy, execution_policy
from .checks import step_build_tools, step_quotas
from .context import Context, Report, Step
from .network import step_network
from .resources import chosen_key, step_bucket, step_cluster, step_kms_key, step_log_groups, step_repository
from .roles import step_boundary, step_old_task_role, step_role

__all__ = ["doctor", "setup"]


def _steps(ctx: Context, report: Report, fix: bool, subnets: list[str] | None, make_key: bool = False) -> None:
    step_kms_key(ctx, report, fix, make_key)
    step_bucket(ctx, report, fix)
    step_repository(ctx, report, fix)
    step_cluster(ctx, report, fix)
    step_log_groups(ctx, report, fix)
    step_network(ctx, report, fix, subnets)
    names = ctx.names
    step_role(ctx, report, fix, ctx.execution_role, execution_policy(names), "execution_role_arn")
    step_boundary(ctx, report, fix)
    step_old_task_role(ctx, report, fix)
    build = build_policy(names, ctx.kms_key)
    step_role(ctx, report, fix, ctx.build_role, build, "build_role_arn", "codebuild.amazonaws.com")
    step_quotas(ctx, report)


def setup(
    *,
    region: str | None = None,
    profile: str | None = None,
    subnets: list[str] | None = None,
    kms_key: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    echo: Callable[[str], None] = print,
) -> Report:
    """Create or repair everything the fargate backend needs, then save it in the user's config.

    ``kms_key``: ``"create"`` (a customer-managed key of setup's own), a key id, ARN or ``alias/...`` (yours),
    ``"default"`` (AWS-managed keys), or None to keep what is configured."""
    ctx = Context(region, profile)
    echo(f"cloudburst setup: AWS account {ctx.account} ({ctx.identity}), region {ctx.region}")
    values = userconfig.load()
    ctx.kms_key, make_key = chosen_key(ctx, kms_key, str(values.get("kms_key") or ""))
    if confirm is not None and not confirm(
        f"Create or repair cloudburst's bucket, ECR repository, ECS cluster, roles, log group and security group"
        f"{', and a KMS key,' if make_key else ''} in {ctx.region}?"
    ):
        raise CloudError("setup cancelled; nothing was changed", service="cloudburst", operation="setup")
    report = Report(echo=echo)
    _steps(ctx, report, True, subnets, make_key)
    before = dict(values)
    values.update({k: v for k, v in report.config.items() if not k.startswith("_")})
    values.pop("task_role_arn", None)  # each job has its own role now
    if not ctx.kms_key:
        values.pop("kms_key", None)  # AWS-managed keys
    values["region"] = ctx.region
    if profile:
        values["profile"] = profile
    if values != before or not userconfig.config_path().exists():
        path = userconfig.save(values)
        report.add(Step(f"configuration {path}", "made" if not before else "repaired", "saved"))
    else:
        report.add(Step(f"configuration {userconfig.config_path()}", "found", "up to date"))
    echo("Nothing changed: everything was already in place." if not report.changed else "cloudburst is set up.")
    return report


def doctor(*, region: str | None = None, profile: str | None = None, echo: Callable[[str], None] = print) -> Report:
    """Look at every resource, without changing anything; each problem comes with its fix."""
    report = Report(echo=echo)
    config = userconfig.load()
    try:
        ctx = Context(region or userconfig.lookup("region").value, profile or userconfig.lookup("profile").value)
    except CloudError as exc:
        report.add(
            Step("credentials", "problem", str(exc), "configure AWS credentials (aws configure / aws sso login)")
        )
        return report
    report.add(Step("credentials", "ok", f"{ctx.identity} in {ctx.region}"))
    configured = str(config.get("kms_key") or "")
    ctx.kms_key = configured if configured.split(":")[3:4] == [ctx.region] else ""
    if not config.get("bucket"):
        report.add(Step("configuration", "problem", "no saved set-up", "run `cloudburst setup`"))
    _steps(ctx, report, False, config.get("subnets") or None)
    step_build_tools(ctx, report)
    echo(f"{len(report.problems)} problem(s) found." if report.problems else "No problems found.")
    return report
