"""Set-up step for the workers' network: subnets (the default VPC's unless chosen) and an egress-only
security group.
"""

from __future__ import annotations

from .context import SECURITY_GROUP, TAG, Context, Report, Step, record

__all__ = ["step_network"]


def step_network(ctx: Context, report: Report, fix: bool, subnets: list[str] | None) -> None:
    """The workers' subnets (the default VPC's unless chosen) and their egress-only security group."""
    ec2 = ctx.client("ec2")
    if subnets:
        found = ec2.describe_subnets(SubnetIds=subnets)["Subnets"]
        vpc = found[0]["VpcId"]
        where = f"VPC {vpc}"
    else:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            report.add(
                Step(
                    "network",
                    "problem",
                    "this region has no default VPC",
                    "run `cloudburst setup --subnets subnet-a,subnet-b` with subnets that reach the internet",
                )
            )
            return
        vpc = vpcs[0]["VpcId"]
        found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
        subnets = [s["SubnetId"] for s in found]
        where = f"default VPC {vpc}"
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [SECURITY_GROUP]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if groups:
        group = groups[0]
        status = "found"
    elif fix:
        made = ec2.create_security_group(
            GroupName=SECURITY_GROUP,
            Description="cloudburst workers: outbound only",
            VpcId=vpc,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": [TAG]}],
        )
        group = {"GroupId": made["GroupId"], "IpPermissions": []}
        status = "made"
    else:
        report.add(Step(f"security group {SECURITY_GROUP}", "problem", "missing", "run `cloudburst setup`"))
        return
    repaired = []
    if group.get("IpPermissions"):
        repaired.append("inbound rules removed (workers need none)")
        if fix:
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
    record(report, f"network: {len(subnets)} subnet(s) in {where}, security group {SECURITY_GROUP}", status, [], fix)
    if repaired:
        record(report, f"security group {SECURITY_GROUP}", "found", repaired, fix)
    report.config["subnets"] = subnets
    report.config["security_groups"] = [group["GroupId"]]
