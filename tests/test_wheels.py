"""arch='arm64' only when every pinned package has a Linux ARM64 wheel: asked of a real (local) index."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import pytest

import cloudburst
from cloudburst.emulator import Emulator
from cloudburst.environment.snapshot import snapshot
from cloudburst.environment.wheels import missing_arm64_wheels

# A package index: name -> file names, as PyPI lists them.
FILES = {
    "numpy": [
        "numpy-2.1.0.tar.gz",
        "numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "numpy-2.1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
        "numpy-2.1.0-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
    ],
    "x86only": ["x86only-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", "x86only-1.0.tar.gz"],
    "sdistonly": ["sdistonly-3.0.tar.gz"],
    "abi3pkg": ["abi3pkg-0.5-cp38-abi3-manylinux_2_28_aarch64.whl"],
    "pureremote": ["pureremote-1.2-py3-none-any.whl"],
    "newer": ["newer-1.0-cp311-cp311-manylinux_2_39_aarch64.whl"],  # needs a newer glibc than the image has
}


class Index(BaseHTTPRequestHandler):
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        name = self.path.strip("/").split("/")[-1]
        Index.asked.append(name)
        if name not in FILES:
            self.send_response(404)
            self.end_headers()
            return
        if "json" in self.headers.get("Accept", "") and name != "abi3pkg":  # one project answers HTML only
            body = json.dumps({"meta": {"api-version": "1.0"}, "files": [{"filename": f} for f in FILES[name]]})
            kind = "application/vnd.pypi.simple.v1+json"
        else:
            body = "".join(f'<a href="../../files/{f}#sha256=00">{f}</a>' for f in FILES[name])
            kind = "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    monkeypatch.setenv("UV_INDEX_URL", url)  # the only index: PyPI is not asked
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    Index.asked.clear()
    try:
        yield url
    finally:
        server.shutdown()


def requirements(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_packages_without_an_arm64_wheel_are_named(index: str, tmp_path: Path) -> None:
    tqdm = f"tqdm=={metadata.version('tqdm')}"  # installed here from a py3-none-any wheel: no request
    snap = snapshot(
        requirements(
            tmp_path,
            "numpy==2.1.0",
            "x86only==1.0",
            "sdistonly==3.0",
            "abi3pkg==0.5",
            "pureremote==1.2",
            "newer==1.0",
            "unknown==9.9",
            "requests>=2",
            tqdm,
        )
    )
    snap = type(snap)(**{**snap.__dict__, "runtime": ()})  # only what this test names
    missing, notes = missing_arm64_wheels(snap)
    assert missing == ["newer==1.0", "sdistonly==3.0", "unknown==9.9", "x86only==1.0"]
    assert any("requests>=2: not pinned" in n for n in notes)
    assert "tqdm" not in Index.asked
    asked = len(Index.asked)
    missing_again, _ = missing_arm64_wheels(snap)
    assert missing_again == missing
    assert len(Index.asked) - asked == 4  # wheels found once are remembered; only the missing are asked again


def test_arm64_is_refused_before_anything_is_built_or_launched(index: str, tmp_path: Path, emulator: Emulator) -> None:
    watched = ("ecs.RunTask", "sqs.CreateQueue", "codebuild.StartBuild", "s3.PutObject")
    before = {k: emulator.calls.get(k, 0) for k in watched}
    reqs = requirements(tmp_path, "numpy==2.1.0", "x86only==1.0")
    with pytest.raises(
        cloudburst.ConfigurationError,
        match=r"arch='arm64' needs a Linux ARM64 wheel of every package, and \d+ have none at the pinned version: "
        r".*x86only==1\.0.*Use arch='x86_64'",
    ):
        cloudburst.Executor(1, backend="fargate", arch="arm64", image="python", requirements=str(reqs))
    assert {k: emulator.calls.get(k, 0) for k in watched} == before
