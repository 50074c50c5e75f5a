"""EMULATED AWS: run the whole cloud path on this machine, without an AWS account.

::

    with cloudburst.emulator.Emulator() as emu:         # moto on 127.0.0.1, an ECS agent, quota/pricing stubs
        results = cloudburst.map(fn, items, backend="fargate")

    $ python -m cloudburst.emulator [--shell | -- CMD ...]   # the same for the `cloudburst` command

While it runs, the settings, detached-job records and caches of this process live in the
emulator's own folder (:attr:`Emulator.folder`), which goes when it stops: nothing made
against emulated AWS is left among the user's own.

Nothing here reaches AWS. moto's server answers S3, SQS, ECS, IAM, EC2, Logs and
STS on loopback; an emulated ECS agent runs each task that RunTask creates as a
real ``python -m cloudburst.worker`` process; Service Quotas and Pricing, which
moto lacks, are served by stubs. Fault hooks make AWS misbehave on purpose:
:meth:`Emulator.throttle`, :meth:`Emulator.capacity_shortage`,
:meth:`Emulator.kill_worker`, :meth:`Emulator.interrupt_spot`.

Light mode (``Emulator(light=True)``; ``CLOUDBURST_EMULATOR_LIGHT=1`` in the environment, which
``python -m cloudburst.emulator`` reads too; or :meth:`Emulator.light_mode` for a block): one process
serves every emulated Fargate task, each task's worker loops on threads of the emulator's process
instead of a process of its own, so that a thousand workers fit on one machine
(:mod:`cloudburst.emulator.light` says what it leaves out).

Needs the ``emulator`` extra: ``pip install 'cloudburst[emulator]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import warm
from ..backends.aws.setup import setup
from ..config import userconfig
from ..core.words import plural
from ..errors import ConfigurationError
from . import access, sqsscan
from .agent import EcsAgent, EmulatedTask, default_worker_env, network_env
from .identities import ACCOUNT, assume, make_admin, make_runner, make_user
from .s3policy import count_loopback_as_tls
from .server import FaultRule, Gateway, PricingStub, QuotaStub, quiet_handler

__all__ = ["EmulatedTask", "Emulator", "FaultRule", "network_env"]

EMULATED_IMAGE = "cloudburst-emulated/this-machine:latest"
BANNER = "cloudburst: EMULATED AWS on {url} (moto + an ECS agent on this machine{mode}); nothing reaches AWS"
LIGHT_VARIABLE = "CLOUDBURST_EMULATOR_LIGHT"


def _require_moto() -> None:
    try:
        import moto  # noqa: F401
        import werkzeug  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError("the AWS emulator needs moto's server: pip install 'cloudburst[emulator]'") from exc


class Emulator:
    """Emulated AWS for this process and the workers it starts. Use as a context manager."""

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        cold_start: float = 0.0,
        quota_on_demand: float = 4000,
        quota_spot: float = 4000,
        poll_interval: float = 0.2,
        provision: bool = True,
        verbose: bool = True,
        user_regions: Sequence[str] = (),
        light: bool | None = None,
    ) -> None:
        _require_moto()
        #: tasks' worker loops on threads of this process (None: CLOUDBURST_EMULATOR_LIGHT=1 says so)
        self._light = os.environ.get(LIGHT_VARIABLE, "") == "1" if light is None else light
        self.region = region
        #: the regions whose user_policy() the emulated user holds (the region's own always)
        self.user_regions = tuple(dict.fromkeys([region, *user_regions]))
        self.credentials: dict[str, str] = {}  # the emulated user's per-run access key
        self._admin: dict[str, str] = {}
        self.cold_start = cold_start
        self.poll_interval = poll_interval
        self.provision_resources = provision
        self.verbose = verbose
        self.quotas = QuotaStub(quota_on_demand, quota_spot)
        self.pricing = PricingStub()
        self.url = ""
        self.resources: dict[str, str] = {}
        self._saved_env: dict[str, str | None] = {}
        self._env: dict[str, str | None] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._work_dir = Path(tempfile.mkdtemp(prefix="cloudburst-emulator-"))
        self.gateway: Gateway | None = None
        self.builds: list[str] = []  # image URIs emulated CodeBuild builds pushed
        self.build_failures: list[str] = []  # what stopped a build: a role it could not take, AccessDenied
        self.agent: EcsAgent | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Emulator:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self._reset_moto()
        count_loopback_as_tls()  # the bucket's TLS-only policy (moto ignores its condition)
        self.credentials = make_user(self.user_regions)
        self._admin = make_admin()
        access.install()
        sqsscan.install()
        self.gateway = Gateway(DomainDispatcherApplication(create_backend_app), self.quotas, self.pricing)
        self.gateway.on_build = self._build
        self.gateway.client_keys.add(self.credentials["AWS_ACCESS_KEY_ID"])
        self._server = make_server("127.0.0.1", 0, self.gateway, threaded=True, request_handler=quiet_handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="cloudburst-emulator", daemon=True)
        self._thread.start()
        self._set_env(
            {
                "AWS_ENDPOINT_URL": self.url,
                # The emulated user's own key, made for this run: moto accepts no other (access.py).
                **self.credentials,
                "AWS_SESSION_TOKEN": None,
                "AWS_PROFILE": None,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region,
                "CLOUDBURST_POLL_INTERVAL": str(self.poll_interval),
                # Nothing made against emulated AWS lands among the user's own: not the settings `setup`
                # writes, nor the records of detached jobs (whose queues vanish with the emulator), nor
                # what is learnt (prices). All of it goes with the folder when the emulator stops.
                "CLOUDBURST_CONFIG_DIR": str(self._work_dir / "config"),
                "CLOUDBURST_JOBS_DIR": str(self._work_dir / "jobs"),
                "CLOUDBURST_CACHE_DIR": str(self._work_dir / "cache"),
            }
        )
        worker_env = default_worker_env(self.url)
        self.agent = EcsAgent(
            worker_env, self._work_dir, cold_start=self.cold_start, registered=self.gateway.registered
        )
        self.agent.light = self._light
        self.agent.start()
        if self.provision_resources:
            self.provision()
        if self.verbose:
            print(BANNER.format(url=self.url, mode=", light mode" if self._light else ""), file=sys.stderr)
        return self

    def stop(self) -> None:
        """Stop the emulated cloud and give the process its environment back."""
        warm.shutdown()  # workers cloudburst.map keeps warm here would outlive the cloud they run in
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        access.uninstall()
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()
        self._env.clear()
        shutil.rmtree(self._work_dir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def runner(self) -> dict[str, str]:
        """Credentials (environment variables) of another client of this emulator: a user holding the user
        policy alone, who runs cloudburst but did not set it up."""
        assert self.gateway is not None
        credentials = make_runner(self.region)
        self.gateway.client_keys.add(credentials["AWS_ACCESS_KEY_ID"])
        return credentials

    def admin(self, service: str, region: str | None = None) -> Any:
        """A client for another identity of the emulated account, allowed everything (not the cloudburst
        user): for playing someone else, or inspecting what the user may not."""
        import boto3

        return boto3.client(service, region_name=region or self.region, endpoint_url=self.url, **self._admin)

    @property
    def folder(self) -> Path:
        """The emulator's own folder: its settings, detached-job records, caches and worker logs; removed on stop."""
        return self._work_dir

    @property
    def environment(self) -> dict[str, str | None]:
        """The environment variables the emulator set in this process (None: removed), for other processes."""
        return dict(self._env)

    def _set_env(self, values: dict[str, str | None]) -> None:
        for name, value in values.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            self._env[name] = value
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    @staticmethod
    def _reset_moto() -> None:
        from moto.moto_api import state_manager
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()
        state_manager.unset_transition("ecs::task")

    # ------------------------------------------------------------------ `cloudburst setup`, emulated
    def provision(self) -> dict[str, str]:
        """Run ``cloudburst setup`` against the emulated account, into the emulator's config directory."""
        config = setup(region=self.region, echo=lambda line: None).config
        # The agent runs this machine's interpreter whatever the image; the name says so.
        userconfig.set_value("image", EMULATED_IMAGE)
        self.resources = {
            "CLOUDBURST_BUCKET": config["bucket"],
            "CLOUDBURST_CLUSTER": config["cluster"],
            "CLOUDBURST_SUBNETS": ",".join(config["subnets"]),
            "CLOUDBURST_SECURITY_GROUPS": ",".join(config["security_groups"]),
            "CLOUDBURST_EXECUTION_ROLE_ARN": config["execution_role_arn"],
            "CLOUDBURST_WORKER_BOUNDARY_ARN": config["worker_boundary_arn"],
            "CLOUDBURST_LOG_GROUP": config["log_group"],
            "CLOUDBURST_REGION": self.region,
        }
        return self.resources

    def _build(self, request: dict[str, Any], image_uri: str) -> None:
        """An emulated CodeBuild build, acting with its project's service role (taken as CodeBuild takes it):
        it reads its build context and 'pushes' its image (PutImage of a manifest for that tag)."""
        import boto3
        from moto.codebuild.models import codebuild_backends

        repository_path, _, image_tag = image_uri.rpartition(":")
        repository = repository_path.split("/", 1)[1]
        region = repository_path.split(".")[3]  # <account>.dkr.ecr.<region>.amazonaws.com/<repository>
        project = str(request.get("projectName", ""))
        self.builds.append(image_uri)
        layer = "sha256:" + hashlib.sha256(image_tag.encode()).hexdigest()
        manifest = json.dumps(  # unique per tag, so each build is its own image
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "annotations": {"cloudburst.tag": image_tag},
                "layers": [{"digest": layer}],  # moto derives the image digest from the layers (else at random)
            }
        )
        try:
            found = codebuild_backends[ACCOUNT][region].codebuild_projects[project].project_metadata
            source = str(request.get("sourceLocationOverride") or found["source"]["location"])
            credentials = assume(
                found["serviceRole"],
                service="codebuild.amazonaws.com",
                source_arn=f"arn:aws:codebuild:{region}:{ACCOUNT}:project/{project}",
                region=region,
                session=f"build-{image_tag[:40]}",
            )
            session = boto3.Session(
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
                region_name=region,
            )
            bucket, _, key = source.partition("/")
            session.client("s3", endpoint_url=self.url).get_object(Bucket=bucket, Key=key)
            ecr = session.client("ecr", endpoint_url=self.url)
            ecr.put_image(repositoryName=repository, imageManifest=manifest, imageTag=image_tag)
        except Exception as exc:  # the build fails; the client finds no image
            self.build_failures.append(f"{image_uri}: {exc}")
            print(f"cloudburst emulator: the image build for {image_uri} failed: {exc}", file=sys.stderr)

    # ------------------------------------------------------------------ fault hooks and inspection
    @property
    def calls(self) -> dict[str, int]:
        """Requests the server has answered, by ``service.Operation`` (every process, workers included)."""
        assert self.gateway is not None
        with self.gateway.lock:
            return dict(self.gateway.calls)

    @property
    def client_calls(self) -> dict[str, int]:
        """The part of :attr:`calls` that the emulator's clients made (this process and its children, with the
        emulated user's or a :meth:`runner`'s credentials); the rest are workers' (task roles) and admin's."""
        assert self.gateway is not None
        with self.gateway.lock:
            return dict(self.gateway.client_calls)

    def add_fault(self, rule: FaultRule) -> FaultRule:
        assert self.gateway is not None
        with self.gateway.lock:
            self.gateway.faults.append(rule)
        return rule

    def clear_faults(self) -> None:
        assert self.gateway is not None
        with self.gateway.lock:
            self.gateway.faults.clear()

    def throttle(
        self, service: str = "ecs", operation: str = "RunTask", *, times: int | None = None, share: float = 0.0
    ) -> FaultRule:
        """Answer ThrottlingException to the next ``times`` calls (or a ``share`` of calls)."""
        return self.add_fault(FaultRule(service, operation, times=times, share=share))

    def fail(
        self,
        service: str,
        operation: str,
        *,
        code: str = "ServiceUnavailable",
        status: int = 503,
        times: int | None = None,
        share: float = 0.0,
    ) -> FaultRule:
        """Answer an error to the next ``times`` calls (or a ``share`` of calls)."""
        return self.add_fault(
            FaultRule(
                service, operation, code=code, status=status, message="emulated failure", times=times, share=share
            )
        )

    def capacity_shortage(self, times: int = 1) -> FaultRule:
        """The next ``times`` RunTask calls start nothing and report that Fargate capacity is short."""
        return self.add_fault(
            FaultRule(
                "ecs",
                "RunTask",
                times=times,
                run_task_failure="Capacity is unavailable at this time. Please try again later or in a different "
                "availability zone",
            )
        )

    def workers(self) -> list[EmulatedTask]:
        """Emulated Fargate tasks whose worker process is running."""
        assert self.agent is not None
        return self.agent.running()

    def wait_for_workers(self, count: int = 1, timeout: float = 30) -> list[EmulatedTask]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = self.workers()
            if len(running) >= count:
                return running
            time.sleep(0.05)
        raise TimeoutError(f"fewer than {plural(count, 'emulated worker')} started within {timeout:g} s")

    def kill_worker(self, task_id: str | None = None) -> str:
        """SIGKILL a worker's process (the oldest running one if none is named); returns its task id."""
        assert self.agent is not None
        target = task_id or self.wait_for_workers(1)[0].task_id
        self.agent.kill(target)
        return target

    def interrupt_spot(self, task_id: str | None = None) -> str:
        """Interrupt a worker as Fargate Spot does (SIGTERM, stopCode SpotInterruption)."""
        assert self.agent is not None
        target = task_id or self.wait_for_workers(1)[0].task_id
        self.agent.interrupt_spot(target)
        return target

    def worker_pids(self) -> dict[str, int]:
        assert self.agent is not None
        return self.agent.pids()

    @property
    def light(self) -> bool:
        """Light mode: tasks that start now run their worker loops on threads of this process."""
        return self._light if self.agent is None else self.agent.light

    @contextlib.contextmanager
    def light_mode(self, on: bool = True) -> Iterator[None]:
        """Within the block, tasks that start run in light mode (``on``) or as processes of their own; tasks
        running already go on as they started."""
        assert self.agent is not None
        saved = self.agent.light
        self.agent.light = on
        try:
            yield
        finally:
            self.agent.light = saved

    @contextlib.contextmanager
    def image(self, python: str | Path, env: Mapping[str, str] | None = None) -> Iterator[None]:
        """Within the block, containers run ``python`` (the image's interpreter) with ``env`` added to their
        environment (what the image sets); ``network_env()`` gives them this machine's network settings."""
        assert self.agent is not None
        saved = self.agent.python, self.agent.extra_env
        self.agent.python, self.agent.extra_env = str(python), dict(env or {})
        try:
            yield
        finally:
            self.agent.python, self.agent.extra_env = saved
