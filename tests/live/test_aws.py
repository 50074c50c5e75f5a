"""The live-AWS suite: the contract and the failure table against a real account (``pytest -m aws``).

Test bodies come from the contract suite, cloudburst.testing (called below with this folder's fixtures);
what only makes sense on AWS, or needs AWS-sized waits, is written here. Every job runs under
``max_cost_per_job`` (conftest.MAX_COST_PER_JOB) and the account is torn down after the session.
"""

from __future__ import annotations

from typing import Any

import pytest

import cloudburst
from cloudburst.backends.aws.ops import cleanup as clean_up_job
from cloudburst.backends.aws.ops import find_jobs, leftovers
from cloudburst.testing import tasks
from cloudburst.testing.behaviour import ErrorContract, FutureContract, MapContract
from cloudburst.testing.failures import BAD, ROWS, FailureContract, Row

from .conftest import COLD_START, assert_nothing_left_in_the_account

pytestmark = [pytest.mark.aws, pytest.mark.timeout(1800)]

# The contract suite's bodies (cloudburst.testing), run with this folder's fixtures.


def test_map_keeps_input_order(executor: cloudburst.Executor) -> None:
    MapContract().test_map_keeps_input_order(executor)


def test_map_raises_at_the_failed_item(executor: cloudburst.Executor) -> None:
    MapContract().test_map_raises_at_the_failed_item(executor)


def test_module_map_and_its_error_modes(backend: str) -> None:
    MapContract().test_module_map_and_its_error_modes((backend, {}))


def test_exception_keeps_type_and_traceback(executor: cloudburst.Executor) -> None:
    ErrorContract().test_exception_keeps_type_and_traceback(executor)


def test_cancel_a_pending_future(make_executor: Any) -> None:
    FutureContract().test_cancel_a_pending_future(make_executor)


def test_shutdown_cancels_and_refuses(make_executor: Any) -> None:
    FutureContract().test_shutdown_cancels_and_refuses(make_executor)


# Rows whose worker dies wait for a new Fargate task per death (30-60 s each), past those rows' waits;
# test_a_worker_that_dies_is_retried_then_reported covers a death here with waits sized for AWS.
AWS_ROWS = [row for row in ROWS if row.error is not cloudburst.WorkerDiedError]


@pytest.mark.parametrize("row", AWS_ROWS, ids=lambda r: r.name)
def test_item_failure_on_aws(row: Row, make_executor: Any) -> None:
    FailureContract().test_failure_row(row, make_executor(2))


def test_a_worker_that_dies_is_retried_then_reported(make_executor: Any) -> None:
    ex = make_executor(1, retries=1)
    futures = [ex.submit(tasks.sigkill_on_bad, i) for i in range(4)]
    with pytest.raises(cloudburst.WorkerDiedError, match=r"died 2 time\(s\)") as info:
        futures[BAD].result(timeout=COLD_START)
    assert info.value.attempts == 2
    assert [f.result(timeout=COLD_START) for i, f in enumerate(futures) if i != BAD] == [0, 1, 3]


def test_detached_job_is_collected_by_attach(live_aws: dict[str, Any]) -> None:
    job_id = cloudburst.submit_job(tasks.square, range(20), workers=1, chunksize=5)
    assert cloudburst.attach(job_id).results(timeout=COLD_START) == [x * x for x in range(20)]
    assert_nothing_left_in_the_account(live_aws, job_id)


def test_cleanup_removes_what_a_kept_job_left(live_aws: dict[str, Any]) -> None:
    ex = cloudburst.Executor(1, backend="fargate", keep=True)
    assert ex.submit(tasks.square, 4).result(timeout=COLD_START) == 16
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
