"""The live-AWS suite: the contract and the failure table against a real account (``pytest -m aws``).

Test bodies come from the emulator suite unchanged (imported below, run with this folder's fixtures);
what only makes sense on AWS, or needs AWS-sized waits, is written here. Every job runs under
``max_cost_per_job`` (conftest.MAX_COST_PER_JOB) and the account is torn down after the session.
"""

from __future__ import annotations

from typing import Any

import pytest

import cloudburst
from cloudburst.backends.aws.ops import cleanup as clean_up_job
from cloudburst.backends.aws.ops import find_jobs, leftovers

from ..test_behaviour import (
    square,
    test_cancel_pending_future,
    test_map_keeps_input_order,
    test_map_raises_at_the_failed_item,
    test_module_map_returns_list,
    test_shutdown_cancel_futures,
    test_user_exception_keeps_type_and_remote_traceback,
)
from ..test_failures import BAD, ITEM_FAILURES, Row, sigkill_on_bad
from ..test_failures import test_item_failure as item_failure
from .conftest import COLD_START, assert_nothing_left_in_the_account

pytestmark = [pytest.mark.aws, pytest.mark.timeout(1800)]

__all__ = [  # the contract suite's bodies, collected here with the live fixtures
    "test_cancel_pending_future",
    "test_map_keeps_input_order",
    "test_map_raises_at_the_failed_item",
    "test_module_map_returns_list",
    "test_shutdown_cancel_futures",
    "test_user_exception_keeps_type_and_remote_traceback",
]

# Rows whose worker dies wait for a new Fargate task per death (30-60 s each), past those rows' waits;
# test_a_worker_that_dies_is_retried_then_reported covers a death here with waits sized for AWS.
AWS_ROWS = [row for row in ITEM_FAILURES if row.error is not cloudburst.WorkerDiedError]


@pytest.mark.parametrize("row", AWS_ROWS, ids=lambda r: r.name)
def test_item_failure_on_aws(row: Row, make_executor: Any) -> None:
    item_failure(row, make_executor)


def test_a_worker_that_dies_is_retried_then_reported(make_executor: Any) -> None:
    ex = make_executor(1, retries=1)
    futures = [ex.submit(sigkill_on_bad, i) for i in range(4)]
    with pytest.raises(cloudburst.WorkerDiedError, match=r"died 2 time\(s\)") as info:
        futures[BAD].result(timeout=COLD_START)
    assert info.value.attempts == 2
    assert [f.result(timeout=COLD_START) for i, f in enumerate(futures) if i != BAD] == [0, 1, 3]


def test_detached_job_is_collected_by_attach(live_aws: dict[str, Any]) -> None:
    job_id = cloudburst.submit_job(square, range(20), workers=1, chunksize=5)
    assert cloudburst.attach(job_id).results(timeout=COLD_START) == [x * x for x in range(20)]
    assert_nothing_left_in_the_account(live_aws, job_id)


def test_cleanup_removes_what_a_kept_job_left(live_aws: dict[str, Any]) -> None:
    ex = cloudburst.Executor(1, backend="fargate", keep=True)
    assert ex.submit(square, 4).result(timeout=COLD_START) == 16
    ex.shutdown()
    region, profile = live_aws.get("region"), live_aws.get("profile")
    found = [
        v
        for v in leftovers(find_jobs(region, profile, live_aws["bucket"], live_aws["cluster"]), 0)
        if v.job_id == ex.job_id
    ]
    assert found, "the kept job is not found as a leftover"
    assert clean_up_job(found[0], region, profile, live_aws["bucket"], live_aws["cluster"])
    assert_nothing_left_in_the_account(live_aws, ex.job_id)


def test_selftest_on_the_account(live_aws: dict[str, Any]) -> None:
    from cloudburst.backends.aws.selftest import selftest

    report = selftest(region=live_aws.get("region"), profile=live_aws.get("profile"), max_cost=0.05)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert report.ok, failed
