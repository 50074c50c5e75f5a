"""The AWS backends: an S3 store, SQS queues and an ECS Fargate launcher.

boto3 is imported only inside this package, which is loaded when a user asks
for ``backend="fargate"``; without boto3 the registry says to install the
``aws`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
