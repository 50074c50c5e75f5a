"""Environment-sync benchmarks, measured in one run against emulated AWS (moto + the ECS agent emulator).

    python benchmarks/bench_env.py            # full: 10 cached checks, 3 worker starts each way
    python benchmarks/bench_env.py --quick    # 5 cached checks, 1 worker start each way

1. A cold snapshot and tag (a fresh interpreter: import, list and pin every installed
   distribution, hash the recipe) against ``pip freeze`` and ``uv pip freeze`` (installed
   with the ``bench`` extra), each a fresh process listing the same environment.
2. The cached image check (the image for this tag is in ECR: ``ensure_image`` returns
   it) against a build (a new tag: build context zipped, uploaded, CodeBuild started and
   followed; emulated CodeBuild finishes at once, so on AWS a build takes minutes more).
3. A worker's start on the stock Python image (``image="python"``: uv and the
   environment installed as it starts, from PyPI with empty caches, into a fresh
   interpreter environment) against one on a built image (nothing to install), as the
   time from ``Executor(...)`` to the first result. Needs network access to PyPI.

Emulated AWS answers in microseconds where AWS takes milliseconds: request counts
carry over to AWS, wall times of AWS calls do not (expect 0.1-0.2 s for the cached
check there).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import cloudburst as cb
from bench_fargate import row, table, timed
from cloudburst.backends.aws.images import ensure_image
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator, network_env
from cloudburst.environment.snapshot import Snapshot

WORKER_PACKAGES = ["cloudpickle", "tblib", "tqdm", "zstandard", "boto3", "platformdirs", "click", "tomli-w"]


def fresh_process(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def best_of(n: int, args: list[str]) -> float:
    return min(fresh_process(args) for _ in range(n))


def image_settings() -> dict[str, str]:
    values = userconfig.load()
    return {
        "region": values["region"],
        "repository": values["ecr_repository"],
        "bucket": values["bucket"],
        "role_arn": values["build_role_arn"],
    }


def check_and_build(checks: int) -> tuple[float, float, int]:
    """(median cached check, one build, requests per cached check)."""
    snap = Snapshot(python="3.11", requirements=("numpy==2.1.0", f"bench-unique=={time.time_ns()}"))
    settings = image_settings()
    started = time.perf_counter()
    ensure_image(snap, profile=None, echo=lambda _: None, **settings)  # type: ignore[arg-type]
    build = time.perf_counter() - started
    from cloudburst.backends.aws import clients

    before = sum(clients.requests.values())
    samples = []
    for _ in range(checks):
        started = time.perf_counter()
        ensure_image(snap, profile=None, echo=lambda _: None, **settings)  # type: ignore[arg-type]
        samples.append(time.perf_counter() - started)
    per_check = (sum(clients.requests.values()) - before) // checks
    return statistics.median(samples), build, per_check


def first_result(emu: Emulator, **options: str) -> float:
    started = time.perf_counter()
    with cb.Executor(1, backend="fargate", progress=False, **options) as ex:  # type: ignore[arg-type]
        ex.submit(abs, -1).result(timeout=600)
        elapsed = time.perf_counter() - started
        ex.shutdown(wait=False, cancel_futures=True)
    return elapsed


def stock_start(emu: Emulator, requirements: Path) -> float:
    """One worker on a fresh "stock Python image": a new virtual environment, empty caches."""
    assert emu.agent is not None
    root = Path(tempfile.mkdtemp(prefix="cloudburst-bench-stock-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        empty_caches = {"UV_CACHE_DIR": str(root / "uv"), "PIP_NO_CACHE_DIR": "1"}  # a new container
        with emu.image(root / "venv" / "bin" / "python", network_env() | empty_caches):
            return first_result(emu, image="python", requirements=str(requirements))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    checks, starts = (5, 1) if args.quick else (10, 3)

    print("cloudburst environment-sync benchmarks against EMULATED AWS (moto + ECS agent emulator on this machine)")
    packages = sum(1 for _ in metadata.distributions())
    print(f"[1] cold snapshot of this environment ({packages} distributions), fresh processes, best of 3")
    ours_snapshot = timed(
        "cloudburst snapshot + tag",
        lambda: best_of(
            3,
            [
                sys.executable,
                "-c",
                "from cloudburst.environment.recipe import tag; "
                "from cloudburst.environment.snapshot import snapshot; tag(snapshot())",
            ],
        ),
    )
    pip_freeze = timed("pip freeze", lambda: best_of(3, [sys.executable, "-m", "pip", "freeze"]))
    beside = Path(sys.executable).parent / "uv"  # installed with the bench extra
    uv = str(beside) if beside.exists() else shutil.which("uv")
    uv_freeze = None
    if uv:
        uv_freeze = timed("uv pip freeze", lambda: best_of(3, [uv, "pip", "freeze", "--python", sys.executable]))

    rows = [
        row(
            "cold snapshot + tag",
            f"{ours_snapshot:.2f} s",
            "pip freeze",
            f"{pip_freeze:.2f} s",
            f"{pip_freeze / ours_snapshot:.1f}× faster",
            "≤ pip freeze",
            ours_snapshot <= pip_freeze,
        )
    ]
    if uv_freeze is not None:
        rows.append(
            row(
                "",
                "",
                "uv pip freeze (Rust, no hashing)",
                f"{uv_freeze:.3f} s",
                f"{ours_snapshot / uv_freeze:.0f}× slower",
                "",
                True,
            )
        )

    with Emulator(verbose=False) as emu:
        print(f"[2] cached image check (median of {checks}) against a build (emulated CodeBuild)")
        cached, build, per_check = timed("ensure_image", lambda: check_and_build(checks))
        rows.append(
            row(
                "cached image check",
                f"{cached * 1000:.1f} ms ({per_check} requests)",
                "building (emulated)",
                f"{build * 1000:.0f} ms + the build",
                f"{build / cached:.0f}× less",
                "< 1 s",
                cached < 1.0,
            )
        )
        requirements = Path(tempfile.mkdtemp(prefix="cloudburst-bench-")) / "requirements.txt"
        requirements.write_text("".join(f"{n}=={metadata.version(n)}\n" for n in WORKER_PACKAGES))
        print(f"[3] worker start to first result, {len(WORKER_PACKAGES)} packages, {starts} run(s) each")
        built = timed("built image", lambda: min(first_result(emu) for _ in range(starts)))
        stock = timed("image='python'", lambda: min(stock_start(emu, requirements) for _ in range(starts)))
        rows.append(
            row(
                "worker start, image='python'",
                f"{stock:.1f} s",
                "built image",
                f"{built:.1f} s",
                f"{stock / built:.1f}× slower",
                "installs, no build",
                True,
            )
        )
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
