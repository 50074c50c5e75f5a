"""SQS queues: the task queue (with its dead-letter queue) and the result queue of a job.

Sends, receives, deletes and lease extensions go in batches of up to ten (the
SQS limit), receives long-poll, and bodies are base64 of the sealed bytes (SQS
carries text). A message is leased by its visibility timeout; a worker extends
it while it runs the task, and a message received more than ``maxReceiveCount``
times moves to the dead-letter queue.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import CloudError
from ..base import Message
from .clients import client, error_code, translate

__all__ = ["JobQueues", "SQSQueue", "create_job_queues", "delete_job_queues"]

BATCH = 10  # SQS: at most ten entries per batch call
MAX_BATCH_BYTES = 1 << 20  # SQS: a batch's bodies add up to at most 1 MiB
MAX_WAIT = 20  # SQS: long polls last at most 20 s
MAX_VISIBILITY = 43_200


class SQSQueue:
    """One SQS queue. Implements the Queue contract."""

    def __init__(self, url: str, region: str | None = None, profile: str | None = None) -> None:
        self.url = url
        self._sqs: Any = client("sqs", region, profile)

    def send_batch(self, bodies: Sequence[bytes]) -> None:
        for group in _groups([base64.b64encode(b).decode("ascii") for b in bodies]):
            entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(group)]
            for attempt in range(6):
                with translate("SQS", "SendMessageBatch", self.url):
                    response = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
                failed = {f["Id"] for f in response.get("Failed", [])}
                if not failed:
                    break
                entries = [e for e in entries if e["Id"] in failed]
                time.sleep(min(2.0, 0.1 * 2**attempt))
            else:
                raise CloudError(
                    f"SQS refused {len(entries)} message(s) six times: {response.get('Failed')}",
                    service="SQS",
                    operation="SendMessageBatch",
                )

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        with translate("SQS", "ReceiveMessage", self.url):
            response = self._sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max(1, min(BATCH, max_messages)),
                WaitTimeSeconds=max(0, min(MAX_WAIT, math.ceil(wait))),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        out = []
        for raw in response.get("Messages", []):
            count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            try:
                body = base64.b64decode(raw["Body"], validate=True)
            except ValueError:
                body = raw["Body"].encode("utf-8", "replace")  # not ours: fails its seal, and is reported
            out.append(Message(raw["ReceiptHandle"], body, count))
        return out

    def ack(self, receipts: Sequence[str]) -> None:
        for start in range(0, len(receipts), BATCH):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts[start : start + BATCH])]
            with translate("SQS", "DeleteMessageBatch", self.url):
                self._sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)

    def extend(self, receipts: Sequence[str], seconds: float) -> None:
        timeout = max(0, min(MAX_VISIBILITY, math.ceil(seconds)))
        for start in range(0, len(receipts), BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": timeout}
                for i, r in enumerate(receipts[start : start + BATCH])
            ]
            with translate("SQS", "ChangeMessageVisibilityBatch", self.url):
                self._sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)

    def purge(self) -> None:
        try:
            self._sqs.purge_queue(QueueUrl=self.url)
        except Exception as exc:
            if error_code(exc) not in ("AWS.SimpleQueueService.PurgeQueueInProgress", "PurgeQueueInProgress"):
                with translate("SQS", "PurgeQueue", self.url):
                    raise


def _groups(bodies: list[str]) -> Iterator[list[str]]:
    group: list[str] = []
    size = 0
    for body in bodies:
        if group and (len(group) == BATCH or size + len(body) > MAX_BATCH_BYTES):
            yield group
            group, size = [], 0
        group.append(body)
        size += len(body)
    if group:
        yield group


@dataclass(frozen=True)
class JobQueues:
    tasks: str
    results: str
    dead_letters: str


def queue_name(job_id: str, role: str) -> str:
    return f"cloudburst-{job_id[:20]}-{role}"


def create_job_queues(
    job_id: str,
    *,
    region: str | None,
    profile: str | None = None,
    lease_seconds: float,
    max_receives: int,
    tags: Mapping[str, str],
) -> JobQueues:
    """Create the job's task, result and dead-letter queues (encrypted, tagged)."""
    sqs: Any = client("sqs", region, profile)
    base = {"SqsManagedSseEnabled": "true", "MessageRetentionPeriod": str(4 * 86400)}
    made: list[str] = []

    def create(role: str, attributes: dict[str, str]) -> str:
        with translate("SQS", "CreateQueue", queue_name(job_id, role)):
            url = str(
                sqs.create_queue(QueueName=queue_name(job_id, role), Attributes=attributes, tags=dict(tags))["QueueUrl"]
            )
        made.append(url)
        return url

    try:
        dlq = create("dlq", base)
        with translate("SQS", "GetQueueAttributes", dlq):
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)})
        tasks = create("tasks", {**base, "VisibilityTimeout": str(math.ceil(lease_seconds)), "RedrivePolicy": redrive})
        results = create("results", base)
    except BaseException:
        for url in made:  # leave no half-made job behind
            sqs.delete_queue(QueueUrl=url)
        raise
    return JobQueues(tasks, results, dlq)


def delete_job_queues(queues: JobQueues, region: str | None, profile: str | None = None) -> None:
    sqs: Any = client("sqs", region, profile)
    for url in (queues.tasks, queues.results, queues.dead_letters):
        try:
            sqs.delete_queue(QueueUrl=url)
        except Exception as exc:
            if error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                with translate("SQS", "DeleteQueue", url):
                    raise
