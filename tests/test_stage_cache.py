"""The stage cache: sealed entries written once, in a local folder and in S3, and what refuses a bad one.

Values are packed as a worker packs them (``Packer`` into a job store), recorded into the cache, looked up,
and read back through an ``Unpacker`` on the cache's store, which checks every blob's sha256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from cloudburst.backends.aws.cachestore import S3CacheStore, cache_key_parameter, read_cache_key
from cloudburst.backends.aws.setup import doctor, setup, teardown
from cloudburst.backends.aws.setup.context import CACHE_RULE
from cloudburst.backends.cachebase import stage_slug
from cloudburst.backends.local import LocalStore
from cloudburst.backends.localcache import KEY_FILE, LocalCacheStore
from cloudburst.cli import main
from cloudburst.config import userconfig
from cloudburst.emulator import Emulator
from cloudburst.errors import PayloadAuthenticationError
from cloudburst.protocol.sealing import SEALED_HEAD
from cloudburst.protocol.serialize import Packer, Unpacker
from cloudburst.stages.cache import StageCache, entry_key, open_cache
from cloudburst.stages.manifest import seal_manifest
from cloudburst.stages.refs import ValueRef
from cloudburst.stages.valuehash import digest

from .conftest import SETUP_REGIONS, fresh_region_fixture

region = fresh_region_fixture(SETUP_REGIONS[::-1], reuse=True)  # setup is idempotent: any of them will do

STAGE = "pipeline:build_model"
INLINE_VALUE = {"rows": [1, 2, 3], "name": "small"}
BLOB_VALUE = bytes(range(256)) * 64  # 16 KiB: a blob when the inline limit is 1 KiB


def call_key(n: object) -> str:
    return hashlib.sha256(f"call {n}".encode()).hexdigest()


def packed_ref(store: LocalStore, value: object, inline_limit: int = 1 << 10) -> ValueRef:
    """``value`` as a worker stores a stage's result: packed into ``store``, with its ref."""
    packed = Packer(store, inline_limit=inline_limit, compress=False).pack(value)
    return ValueRef(digest(value), packed, nbytes=packed.nbytes)


def read_back(cache: StageCache, ref: ValueRef, tmp: Path) -> object:
    assert ref.packed is not None
    folder = tmp / f"read-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    return Unpacker(cache.store, folder).unpack(ref.packed)


@pytest.fixture
def job_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "job")


@pytest.fixture
def local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StageCache]:
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    cache = open_cache("local", {}, "tests")
    yield cache
    cache.close()


@pytest.fixture
def s3_cache(emulator: Emulator) -> Iterator[StageCache]:
    cache = open_cache("fargate", {}, f"tests-{uuid.uuid4().hex[:8]}")  # a namespace (and key) of its own
    yield cache
    cache.close()


@pytest.fixture(params=["local", "s3"])
def cache(request: pytest.FixtureRequest) -> StageCache:
    found: StageCache = request.getfixturevalue("local_cache" if request.param == "local" else "s3_cache")
    return found


# ------------------------------------------------------------------------------------------ round trips
def test_inline_and_blob_refs_round_trip(cache: StageCache, job_store: LocalStore, tmp_path: Path) -> None:
    inline = packed_ref(job_store, INLINE_VALUE)
    blob = packed_ref(job_store, BLOB_VALUE)
    assert inline.packed is not None and inline.packed.inline is not None and not inline.blobs()
    assert blob.packed is not None and blob.packed.blob is not None and len(blob.blobs()) == 1
    parts = ValueRef(digest([INLINE_VALUE, BLOB_VALUE]), None, (inline, blob), kind="list", length=2)
    assert cache.lookup(STAGE, call_key(1)) is None, "nothing recorded yet"
    for n, ref in enumerate((inline, blob, parts)):
        cache.record(STAGE, call_key(n), ref, job_store)
    cache.flush(timeout=60)
    found = [cache.lookup(STAGE, call_key(n)) for n in range(3)]
    assert found == [inline, blob, parts]
    assert read_back(cache, inline, tmp_path) == INLINE_VALUE
    assert read_back(cache, blob, tmp_path) == BLOB_VALUE, "the blob was copied into the cache's store"
    assert cache.store.exists(blob.blobs()[0].key) and blob.blobs()[0].key.startswith("blobs/")
    assert cache.lookup("pipeline:other_stage", call_key(0)) is None, "entries are per stage"
    assert not cache.bad


def test_a_manifest_never_names_a_missing_blob(local_cache: StageCache, job_store: LocalStore) -> None:
    """A blob that cannot be copied (gone from the job store) leaves no entry, and says so."""
    ref = packed_ref(job_store, BLOB_VALUE)
    job_store.delete_prefix("blobs/")
    local_cache.record(STAGE, call_key("gone"), ref, job_store)
    local_cache.flush(timeout=60)
    assert local_cache.lookup(STAGE, call_key("gone")) is None
    assert not local_cache.store.exists(entry_key(STAGE, call_key("gone")))


def test_the_key_file_is_private(local_cache: StageCache, job_store: LocalStore, tmp_path: Path) -> None:
    local_cache.record(STAGE, call_key(0), packed_ref(job_store, 1), job_store)
    local_cache.flush(timeout=60)
    folder = Path(local_cache.where)
    assert folder == tmp_path / "cache" / "stages" / "tests"
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert len(bytes.fromhex((folder / KEY_FILE).read_text())) == 32


def test_stage_names_become_safe_folder_names() -> None:
    assert stage_slug("pipeline:build_model") == "pipeline.build_model"
    assert "/" not in stage_slug("../../etc:passwd")
    assert "/" not in stage_slug("a/b:<locals>.f") and not stage_slug("..").startswith(".")
    long = stage_slug("m:" + "f" * 300)
    assert len(long) == 100 and long != stage_slug("m:" + "f" * 299)


# ------------------------------------------------------------------------------------------ bad entries
class _MakesAFile:
    """Unpickled, it creates a file: what an attacker who can write the cache would plant."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@dataclass
class Planted:
    """What a tampering row works with: the cache, the entry recorded for call 0, and a file to guard."""

    cache: StageCache
    manifest: bytes
    ref: ValueRef
    canary: Path

    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.manifest[SEALED_HEAD:]))

    def resealed(self, body: dict[str, Any]) -> bytes:
        """``body`` in place of the manifest's body, its seal left as it was (an edit in place)."""
        return self.manifest[:SEALED_HEAD] + json.dumps(body).encode()


def _evil_inline(p: Planted) -> bytes:
    body = p.body()
    body["ref"]["packed"]["inline"] = base64.b64encode(b"R" + pickle.dumps(_MakesAFile(str(p.canary)))).decode()
    return p.resealed(body)


def _forged(p: Planted) -> bytes:
    """A whole manifest sealed under a key of the attacker's own."""
    evil = ValueRef(p.ref.digest, None, (), kind="list", length=0)
    return seal_manifest(os.urandom(32), p.cache.namespace, STAGE, call_key(1), evil, 0.0)


def _other_namespace(p: Planted) -> bytes:
    key = p.cache._cache_key()
    return seal_manifest(key, "elsewhere", STAGE, call_key(1), p.ref, 0.0)


def _other_stage(p: Planted) -> bytes:
    return seal_manifest(p.cache._cache_key(), p.cache.namespace, "pipeline:other", call_key(1), p.ref, 0.0)


#: (row, how the entry of call 1 is made from call 0's, the warning's words); the lookup of call 1 must miss
TAMPERING = [
    ("inline bytes replaced by a pickle that makes a file", _evil_inline, "failed its HMAC check"),
    ("manifest of call 0 copied under call 1's name", lambda p: p.manifest, "sealed for another call"),
    ("forged under another key", _forged, "failed its HMAC check"),
    ("sealed for another namespace", _other_namespace, "sealed for another job"),
    ("sealed for another stage", _other_stage, "sealed for stage 'pipeline:other'"),
    ("one bit flipped", lambda p: p.manifest[:-1] + bytes([p.manifest[-1] ^ 1]), "failed its HMAC check"),
    ("truncated", lambda p: p.manifest[:20], "discarded unread"),
    ("not a manifest at all", lambda p: b"{}", "bad header"),
]  # fmt: skip


@pytest.mark.parametrize(("tamper", "words"), [row[1:] for row in TAMPERING], ids=[row[0] for row in TAMPERING])
def test_a_tampered_entry_is_a_miss_with_one_warning(
    tamper: Callable[[Planted], bytes],
    words: str,
    local_cache: StageCache,
    job_store: LocalStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ref = packed_ref(job_store, INLINE_VALUE)
    local_cache.record(STAGE, call_key(0), ref, job_store)
    local_cache.flush(timeout=60)
    store = local_cache.store
    planted = Planted(local_cache, store.get(entry_key(STAGE, call_key(0))), ref, tmp_path / "canary")
    store.put(entry_key(STAGE, call_key(1)), tamper(planted))
    with caplog.at_level(logging.WARNING, logger="cloudburst"):
        assert local_cache.lookup(STAGE, call_key(1)) is None
        assert local_cache.lookup(STAGE, call_key(1)) is None  # looked up again: still no second warning
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert entry_key(STAGE, call_key(1)) in warnings[0] and words in warnings[0], warnings[0]
    assert not planted.canary.exists(), "nothing from a bad entry is unpickled"
    assert local_cache.lookup(STAGE, call_key(0)) == ref, "the good entry still opens"


def test_an_altered_blob_is_refused_when_read(cache: StageCache, job_store: LocalStore, tmp_path: Path) -> None:
    ref = packed_ref(job_store, BLOB_VALUE)
    cache.record(STAGE, call_key(0), ref, job_store)
    cache.flush(timeout=60)
    blob = ref.blobs()[0]
    cache.store.put(blob.key, b"altered" + cache.store.get(blob.key)[7:])
    found = cache.lookup(STAGE, call_key(0))
    assert found == ref, "the manifest is intact: a hit, without reading the value"
    with pytest.raises(PayloadAuthenticationError, match="does not match its sha256"):
        read_back(cache, found, tmp_path)


# ------------------------------------------------------------------------------------------ written once
def test_put_new_has_exactly_one_winner_among_8_threads(local_cache: StageCache, job_store: LocalStore) -> None:
    store = local_cache.store
    assert isinstance(store, LocalCacheStore)
    refs = [packed_ref(job_store, {"writer": n}) for n in range(8)]
    manifests = [
        seal_manifest(local_cache._cache_key(), local_cache.namespace, STAGE, call_key(0), ref, 0.0) for ref in refs
    ]
    start = threading.Barrier(8)
    won: list[int] = []

    def write(n: int) -> None:
        start.wait(timeout=60)
        if store.put_new(entry_key(STAGE, call_key(0)), manifests[n]):
            won.append(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) == 1, won
    assert local_cache.lookup(STAGE, call_key(0)) == refs[won[0]], "the winner's entry, whole"
    assert [o.key for o in store.list("")] == [entry_key(STAGE, call_key(0))], "no temporary file left"


def test_a_second_conditional_put_on_s3_is_refused_and_the_first_stays(s3_cache: StageCache) -> None:
    store = s3_cache.store
    assert store.put_new("entries/x/first", b"first")
    assert not store.put_new("entries/x/first", b"second")
    assert store.get("entries/x/first") == b"first"


RECORDER = """
import hashlib, sys
from pathlib import Path
from cloudburst.backends.local import LocalStore
from cloudburst.protocol.serialize import Packer
from cloudburst.stages.cache import open_cache
from cloudburst.stages.refs import ValueRef
from cloudburst.stages.valuehash import digest

job = LocalStore(Path(sys.argv[1]))
packer = Packer(job, inline_limit=1024, compress=False)
cache = open_cache("local", {}, "shared")
for n in range(30):
    value = [n] * (n * 100)  # inline, then blobs
    key = hashlib.sha256(f"call {n}".encode()).hexdigest()
    cache.record(STAGE, key, ValueRef(digest(value), packer.pack(value)), job)
cache.close()
print("recorded")
""".replace("STAGE", repr(STAGE))


def test_two_processes_recording_the_same_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "CLOUDBURST_CACHE_DIR": str(tmp_path / "cache")}
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    runs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / f"job{i}")], env=env, stdout=subprocess.PIPE)
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs) and all(b"recorded" in out for out in outputs)
    monkeypatch.setenv("CLOUDBURST_CACHE_DIR", str(tmp_path / "cache"))
    cache = open_cache("local", {}, "shared")
    for n in range(30):
        ref = cache.lookup(STAGE, call_key(n))
        assert ref is not None and read_back(cache, ref, tmp_path) == [n] * (n * 100), n
    assert not cache.bad
    cache.close()


# ------------------------------------------------------------------------------------------ setup
def _rules(region: str) -> dict[str, Any]:
    bucket = userconfig.load()["bucket"]
    rules = boto3.client("s3", region_name=region).get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return {rule["Filter"].get("Prefix"): rule for rule in rules if "Expiration" in rule}


def test_setup_expires_the_cache_after_cache_days_and_jobs_after_7(region: str) -> None:
    setup(region=region, echo=lambda line: None)
    rules = _rules(region)
    assert rules["cache/"]["Expiration"]["Days"] == 30 and rules["cache/"]["ID"] == CACHE_RULE
    assert rules["jobs/"]["Expiration"]["Days"] == 7
    userconfig.set_value("cache_days", "60")
    lines: list[str] = []
    assert any(
        s.status == "problem" and "stage cache after 60" in s.detail
        for s in doctor(region=region, echo=lines.append).steps
    )
    setup(region=region, echo=lambda line: None)
    assert _rules(region)["cache/"]["Expiration"]["Days"] == 60 and _rules(region)["jobs/"]["Expiration"]["Days"] == 7
    assert not doctor(region=region, echo=lambda line: None).problems


def test_teardown_deletes_the_cache_key(region: str) -> None:
    setup(region=region, echo=lambda line: None)
    key = read_cache_key(region, None, "teardown-test")
    ssm = boto3.client("ssm", region_name=region)
    stored = ssm.get_parameter(Name=cache_key_parameter("teardown-test"), WithDecryption=True)["Parameter"]
    assert bytes.fromhex(stored["Value"]) == key and stored["Type"] == "SecureString"
    teardown(region=region, echo=lambda line: None)
    assert not ssm.get_parameters_by_path(Path="/cloudburst/cache", Recursive=True)["Parameters"]


# ------------------------------------------------------------------------------------------ cloudburst cache
def _cli(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, ["cache", *args, "--namespace", "tests"], input=input)


def test_cache_list_and_clear_older_than(local_cache: StageCache, job_store: LocalStore, tmp_path: Path) -> None:
    refs = {n: packed_ref(job_store, [n] * 2000) for n in range(5)}  # each a blob of its own
    for n, ref in refs.items():
        local_cache.record("pipeline:a" if n < 3 else "pipeline:b", call_key(n), ref, job_store)
    local_cache.flush(timeout=60)
    old = time.time() - 10 * 86_400
    for n in (0, 1):  # two entries of stage a, and their blobs, written ten days ago
        for key in (entry_key("pipeline:a", call_key(n)), refs[n].blobs()[0].key):
            os.utime(Path(local_cache.where) / key, (old, old))

    listed = _cli("list", "--json")
    assert listed.exit_code == 0, listed.output
    report = json.loads(listed.output)
    assert {k: v["entries"] for k, v in report["stages"].items()} == {"pipeline.a": 3, "pipeline.b": 2}
    assert report["blobs"]["entries"] == 5 and report["stages"]["pipeline.a"]["oldest"].startswith(
        time.strftime("%Y-%m-%d", time.gmtime(old))
    )
    assert "pipeline.b: 2 entries" in _cli("list").output

    assert _cli("clear", "--older-than", "7d", input="n\n").exit_code == 1, "not confirmed: nothing deleted"
    assert local_cache.lookup("pipeline:a", call_key(0)) == refs[0]
    cleared = _cli("clear", "--older-than", "7d", "--yes")
    assert cleared.exit_code == 0 and "deleted 2 entries and 2 blobs" in cleared.output, cleared.output
    assert [local_cache.lookup("pipeline:a", call_key(n)) for n in range(3)] == [None, None, refs[2]]
    for n in (2, 3, 4):  # what was kept still opens, its blob with it
        stage = "pipeline:a" if n < 3 else "pipeline:b"
        found = local_cache.lookup(stage, call_key(n))
        assert found is not None and read_back(local_cache, found, tmp_path) == [n] * 2000

    cleared = _cli("clear", "--stage", "pipeline:b", "--yes")
    assert cleared.exit_code == 0 and "deleted 2 entries" in cleared.output, cleared.output
    assert local_cache.lookup("pipeline:b", call_key(3)) is None and local_cache.lookup("pipeline:a", call_key(2))
    bad = _cli("clear", "--older-than", "a week", "--yes")
    assert bad.exit_code == 2 and "use a number and a unit, e.g. 7d" in bad.output
    assert not local_cache.bad


def test_cache_why_says_when_run_records_are_missing() -> None:
    done = CliRunner().invoke(main, ["cache", "why", "my-pipeline"])
    try:
        import cloudburst.stages.report  # noqa: F401
    except ImportError:
        assert done.exit_code == 1 and "cloudburst.stages.report" in done.output
    else:  # pragma: no cover - once the run records exist, `why` is theirs to test
        assert "Traceback" not in done.output


# ------------------------------------------------------------------------------------------ workers
def _probe(bucket: str, entry: str, parameter: str) -> dict[str, str]:
    """Runs in a job's worker, with the job's own role: try the stage cache."""
    import boto3 as b3

    def code(call: Callable[[], Any]) -> str:
        try:
            call()
        except Exception as exc:
            return str(getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__)
        return "ok"

    s3, ssm = b3.client("s3"), b3.client("ssm")
    return {
        "read an entry": code(lambda: s3.get_object(Bucket=bucket, Key=entry)),
        "plant an entry": code(lambda: s3.put_object(Bucket=bucket, Key=entry + "0", Body=b"x")),
        "list the cache": code(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="cache/")),
        "read the cache key": code(lambda: ssm.get_parameter(Name=parameter, WithDecryption=True)),
    }


def test_workers_cannot_reach_the_cache_nor_its_key(s3_cache: StageCache, job_store: LocalStore) -> None:
    import cloudburst

    s3_cache.record(STAGE, call_key(0), packed_ref(job_store, INLINE_VALUE), job_store)
    s3_cache.flush(timeout=60)
    store = s3_cache.store
    assert isinstance(store, S3CacheStore)
    entry = store.prefix + entry_key(STAGE, call_key(0))
    assert store.get(entry_key(STAGE, call_key(0))), "the client reads it"
    with cloudburst.Executor(backend="fargate", workers=1) as ex:
        codes = ex.submit(_probe, store.bucket, entry, cache_key_parameter(s3_cache.namespace)).result(timeout=180)
    assert all(code in ("AccessDenied", "AccessDeniedException") for code in codes.values()), codes
