"""Checks that change nothing: the Fargate vCPU quotas and the tools that build worker images."""

from __future__ import annotations

from ....core.words import plural
from ..images import docker_engine
from .context import ON_DEMAND_QUOTA, SPOT_QUOTA, Context, Report, Step

__all__ = ["read_quotas", "step_build_tools", "step_quotas"]


def read_quotas(ctx: Context) -> dict[str, float | None]:
    """The account's Fargate vCPU quotas, On-Demand and Spot (None where Service Quotas does not answer)."""
    quotas: dict[str, float | None] = {}
    sq = ctx.client("service-quotas")
    for label, code in (("on_demand", ON_DEMAND_QUOTA), ("spot", SPOT_QUOTA)):
        try:
            quotas[label] = float(sq.get_service_quota(ServiceCode="fargate", QuotaCode=code)["Quota"]["Value"])
        except Exception:
            quotas[label] = None
    return quotas


def step_quotas(ctx: Context, report: Report) -> None:
    """Report the vCPU quotas, and say how to raise one that is low."""
    quotas = read_quotas(ctx)
    on_demand, spot = quotas["on_demand"], quotas["spot"]
    if on_demand is None:
        report.add(Step("Fargate vCPU quotas", "info", "could not be read (servicequotas:GetServiceQuota denied)"))
        return
    text = (
        f"{plural(on_demand, 'vCPU')} On-Demand, {spot or 0:g} Spot: up to {plural(int(on_demand), 'worker')} "
        "with cpu=1 at once"
    )
    if on_demand < 1:
        report.add(Step("Fargate vCPU quotas", "problem", text, "request an increase: `cloudburst quota --request 64`"))
    else:
        report.add(Step("Fargate vCPU quotas", "ok", text))


def step_build_tools(ctx: Context, report: Report) -> None:
    """Report what builds worker images here: a Docker engine, else CodeBuild."""
    engine = docker_engine()
    try:
        ctx.client("codebuild").list_projects()
        codebuild = True
    except Exception:
        codebuild = False
    if engine or codebuild:
        tools = " and ".join(t for t, ok in (("a Docker engine", engine), ("AWS CodeBuild", codebuild)) if ok)
        report.add(Step("image builds", "ok", f"{tools} available"))
    else:
        report.add(
            Step(
                "image builds",
                "problem",
                "no Docker engine and no CodeBuild access",
                "start Docker, allow codebuild:* for your identity, or run with image='python' (no build)",
            )
        )
