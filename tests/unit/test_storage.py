"""freshrank.core.storage: one contract over a local directory, a file:// URI and a real
S3-compatible endpoint (moto's server on 127.0.0.1), plus URI resolution and the object-store
specifics
(unmarked directories are not published, a move is copy + delete)."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from freshrank.core.locations import StorageOptions, is_uri, resolve
from freshrank.core.storage import COMMIT_MARKER, Storage
from freshrank.ops.runtime import free_port

_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 and a free port, with fake credentials."""
    server_mod = pytest.importorskip(
        "moto.server",
        reason="moto[server] is not installed (pip install 'moto[server]', in the dev extra)",
    )
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(_S3_ENV)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _new_bucket(endpoint: str) -> str:
    bucket = f"fr-{uuid.uuid4().hex[:12]}"
    port = endpoint.rsplit(":", 1)[1]
    admin = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    admin.create_dir(bucket)
    return bucket


@pytest.fixture(params=["local", "file-uri", "s3"])
def store(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(tmp_path / "root")
    if request.param == "file-uri":
        return Storage(f"file://{tmp_path}/root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = _new_bucket(endpoint)
    return Storage(f"s3://{bucket}/fr/root", StorageOptions(s3_endpoint=endpoint))


# ------------------------------------------------------------------------------ the contract


def test_write_atomic_round_trip_and_replace(store):
    assert not store.exists("CHAMPION")
    store.write_atomic("CHAMPION", b'{"version": 1}')
    assert store.read("CHAMPION") == b'{"version": 1}'
    store.write_atomic("CHAMPION", b'{"version": 2}')
    assert store.read("CHAMPION") == b'{"version": 2}'
    assert store.size("CHAMPION") == len(b'{"version": 2}')
    assert [e.name for e in store.list()] == ["CHAMPION"]  # no temp file left behind


def test_write_new_refuses_an_existing_name(store):
    store.write_new("shards/shard-000000000001.parquet", b"one")
    with pytest.raises(FileExistsError):
        store.write_new("shards/shard-000000000001.parquet", b"two")
    assert store.read("shards/shard-000000000001.parquet") == b"one"


def test_publish_dir_marker_last_and_once(store):
    files = {"model.pt": b"w" * 1000, "manifest.json": b'{"version": 3}'}
    assert not store.is_published("versions/v000003", marker="manifest.json")
    store.publish_dir(files, "versions/v000003", marker="manifest.json")
    assert store.is_published("versions/v000003", marker="manifest.json")
    assert store.read("versions/v000003/model.pt") == b"w" * 1000
    assert store.read("versions/v000003/manifest.json") == b'{"version": 3}'
    assert store.published("versions", marker="manifest.json") == ["v000003"]
    with pytest.raises(FileExistsError):
        store.publish_dir({"model.pt": b"x"}, "versions/v000003", marker="manifest.json")
    assert store.read("versions/v000003/model.pt") == b"w" * 1000


def test_publish_dir_with_separate_marker(store):
    store.publish_dir({"a.bin": b"a"}, "out/run1")
    assert store.is_published("out/run1")
    assert store.read(f"out/run1/{COMMIT_MARKER}") == b""
    assert sorted(e.name for e in store.list("out/run1")) == [COMMIT_MARKER, "a.bin"]


def test_list_gives_names_sizes_and_times_sorted(store):
    t0 = time.time()
    for name, data in [("b", b"22"), ("a", b"1"), ("c", b"333")]:
        store.write_atomic(f"dir/{name}", data)
    store.write_atomic("dir/sub/x", b"x")
    entries = store.list("dir")
    assert [(e.name, e.size, e.is_dir) for e in entries] == [
        ("a", 1, False),
        ("b", 2, False),
        ("c", 3, False),
        ("sub", 0, True),
    ]
    for e in entries[:3]:
        assert e.mtime is not None and t0 - 5 <= e.mtime <= time.time() + 5
        assert e.path == store.path(f"dir/{e.name}")
    assert store.list("nothing-here") == []


def test_stat_gives_size_and_time(store):
    t0 = time.time()
    store.write_new("shard-000000000001.parquet", b"12345")
    entry = store.stat("shard-000000000001.parquet")
    assert (entry.name, entry.size, entry.is_dir) == ("shard-000000000001.parquet", 5, False)
    assert t0 - 5 <= entry.mtime <= time.time() + 5
    with pytest.raises(FileNotFoundError):
        store.stat("missing")


def test_read_missing_raises_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.read("missing")
    with pytest.raises(FileNotFoundError):
        store.size("missing")


def test_move_into_quarantine(store):
    store.write_atomic("shard-000000000007.parquet", b"bad bytes")
    store.move("shard-000000000007.parquet", "quarantine/shard-000000000007.parquet")
    assert not store.exists("shard-000000000007.parquet")
    assert store.read("quarantine/shard-000000000007.parquet") == b"bad bytes"
    with pytest.raises(FileNotFoundError):
        store.move("shard-000000000007.parquet", "quarantine/other.parquet")
    store.write_atomic("shard-000000000008.parquet", b"8")
    store.write_atomic("quarantine/shard-000000000008.parquet", b"old")
    with pytest.raises(FileExistsError):
        store.move("shard-000000000008.parquet", "quarantine/shard-000000000008.parquet")
    assert store.read("quarantine/shard-000000000008.parquet") == b"old"


def test_delete_and_delete_dir(store):
    store.write_atomic("STOP", b"{}")
    store.delete("STOP")
    store.delete("STOP")  # missing is fine
    with pytest.raises(FileNotFoundError):
        store.delete("STOP", missing_ok=False)
    store.publish_dir({"f": b"1"}, "versions/v000001")
    store.delete_dir("versions/v000001")
    assert not store.is_published("versions/v000001")
    assert not store.exists("versions/v000001/f")
    store.delete_dir("versions/v000001")  # missing is fine


def test_parquet_through_the_filesystem(store):
    table = pa.table({"event_id": ["e1", "e2"], "clicked": [True, False]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.write_new("shard-000000000001.parquet", sink.getvalue().to_pybytes())
    assert pq.read_table(store.open_input("shard-000000000001.parquet")).equals(table)
    via_fs = pq.read_table(store.path("shard-000000000001.parquet"), filesystem=store.fs)
    assert via_fs.equals(table)


def test_child_shares_the_filesystem(store):
    child = store.child("registry")
    child.write_atomic("CHAMPION", b"1")
    assert store.read("registry/CHAMPION") == b"1"
    assert child.uri.endswith("/registry")


def test_write_first_free_takes_the_first_free_name_and_asks_lazily(store):
    store.write_new("s/a", b"taken")
    asked: list[str] = []

    def names():
        for n in ("a", "b", "c"):
            asked.append(n)
            yield f"s/{n}"

    entry = store.write_first_free(names(), b"12345")
    assert asked == ["a", "b"]  # "c" was never needed
    assert (entry.name, entry.size, entry.is_dir) == ("b", 5, False)
    assert entry.path == store.path("s/b") and entry.mtime is not None
    assert store.read("s/a") == b"taken" and store.read("s/b") == b"12345"
    with pytest.raises(FileExistsError):
        store.write_first_free(["s/a", "s/b"], b"x")
    assert [e.name for e in store.list("s")] == ["a", "b"]  # no temp file left behind


def test_published_needs_the_marker_and_every_required_file(store):
    store.publish_dir({"model.pt": b"w", "manifest.json": b"{}"}, "versions/v1", "manifest.json")
    store.write_atomic("versions/v2/manifest.json", b"{}")  # marker only: a required file lacks
    store.write_atomic("versions/v3/model.pt", b"w")  # no marker: a crashed publish
    assert store.published("versions", marker="manifest.json") == ["v1", "v2"]
    assert store.published("versions", "manifest.json", require=("model.pt",)) == ["v1"]
    assert store.published("nothing", marker="manifest.json") == []


def test_delete_dir_leaves_nothing_behind(store):
    store.publish_dir({"f": b"1", "g": b"2"}, "versions/v000001")
    store.publish_dir({"f": b"1"}, "versions/v000002")
    store.delete_dir("versions/v000001")
    assert [e.name for e in store.list("versions", include_temp=True)] == ["v000002"]


def test_sha256_streams_the_bytes(store):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk
    store.write_atomic("big.bin", data)
    assert store.sha256("big.bin") == hashlib.sha256(data).hexdigest()
    with pytest.raises(FileNotFoundError):
        store.sha256("missing.bin")


def test_source_is_what_pyarrow_and_ray_data_read(store):
    table = pa.table({"x": [1, 2, 3]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.write_new("shards/a.parquet", sink.getvalue().to_pybytes())
    paths, fs = store.source(["shards/a.parquet"])
    assert paths == [store.path("shards/a.parquet")]
    if store.is_local:
        assert fs is None and os.path.isabs(paths[0])
    else:
        assert fs is store.fs and not paths[0].startswith("s3:")
    assert pq.read_table(paths[0], filesystem=fs).equals(table)


# ----------------------------------------------------------------------- object-store specifics


def test_unmarked_object_store_directory_is_not_published(s3_endpoint):
    """A publish that crashed before its marker: files are there, the version is not."""
    store = Storage(f"s3://{_new_bucket(s3_endpoint)}/reg", StorageOptions(s3_endpoint=s3_endpoint))
    store.write_atomic("versions/v000002/model.pt", b"half a publish")
    assert store.exists("versions/v000002/model.pt")
    assert not store.is_published("versions/v000002", marker="manifest.json")
    store.publish_dir(
        {"model.pt": b"w1", "manifest.json": b"{}"}, "versions/v000001", "manifest.json"
    )
    assert store.published("versions", marker="manifest.json") == ["v000001"]
    # A later publish of the crashed target overwrites its leftovers.
    store.publish_dir(
        {"model.pt": b"w2", "manifest.json": b"{}"}, "versions/v000002", "manifest.json"
    )
    assert store.read("versions/v000002/model.pt") == b"w2"
    assert store.published("versions", marker="manifest.json") == ["v000001", "v000002"]


def test_s3_endpoint_from_environment(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    bucket = _new_bucket(s3_endpoint)
    store = Storage(f"s3://{bucket}/x")
    store.write_atomic("k", b"v")
    assert store.read("k") == b"v"
    assert store.uri == f"s3://{bucket}/x"


# ----------------------------------------------------------------------------------- resolving


def test_resolve_local_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = resolve("rel/dir")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "rel" / "dir")
    fs, path = resolve(tmp_path / "p")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "p")
    fs, path = resolve(f"file://{tmp_path}/u/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/u"
    assert Storage(tmp_path / "p").uri == str(tmp_path / "p")


def test_resolve_object_stores_without_network():
    fs, path = resolve("s3://bucket/a/b/", StorageOptions(s3_endpoint="http://127.0.0.1:9"))
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/a/b"
    assert fs.region == "us-east-1"
    fs, path = resolve("gs://bucket/a")
    assert fs.type_name == "gcs" and path == "bucket/a"
    assert Storage("gs://bucket/a").uri == "gs://bucket/a"


def test_bad_locations_and_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        resolve("")
    with pytest.raises(ValueError, match="bucket"):
        resolve("s3:///no-bucket", StorageOptions(s3_endpoint="http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="s3_endpoint"):
        StorageOptions(s3_endpoint="127.0.0.1:9000")
    store = Storage(tmp_path)
    for bad in ("../escape", "a/../../b", "/abs"):
        with pytest.raises(ValueError):
            store.path(bad)
    with pytest.raises(ValueError, match="bad file name"):
        store.publish_dir({"a/b": b""}, "v1")
    assert not (tmp_path / "v1").exists()


def test_local_sweep_removes_old_temp_entries_only(tmp_path):
    store = Storage(tmp_path)
    old, fresh = tmp_path / ".tmp-old", tmp_path / ".tmp-fresh"
    old.write_bytes(b"crashed writer")
    fresh.write_bytes(b"writer in flight")
    (tmp_path / ".tmp-olddir").mkdir()
    (tmp_path / ".tmp-olddir" / "model.pt").write_bytes(b"crashed publish")
    (tmp_path / ".tmp-trash-x").mkdir()  # a delete_dir that crashed before deleting
    store.write_atomic("kept", b"1")
    hour_ago = time.time() - 3700
    for p in (old, tmp_path / ".tmp-olddir"):
        os.utime(p, (hour_ago, hour_ago))
    assert store.sweep(min_age_s=3600) == 3
    assert sorted(os.listdir(tmp_path)) == [".tmp-fresh", "kept"]


def test_s3_sweep_removes_old_unmarked_directories_only(s3_endpoint):
    store = Storage(f"s3://{_new_bucket(s3_endpoint)}/reg", StorageOptions(s3_endpoint=s3_endpoint))
    store.publish_dir({"f": b"1"}, "versions/v1")
    store.write_atomic("versions/v2/f", b"crashed publish")
    assert store.sweep("versions", min_age_s=3600) == 0  # young: may be a publish in flight
    assert store.exists("versions/v2/f")
    assert store.sweep("versions", min_age_s=0) == 1
    assert not store.exists("versions/v2/f") and store.is_published("versions/v1")


def test_is_uri():
    assert is_uri("s3://b/x") and is_uri("gs://b") and is_uri("file:///d")
    assert not is_uri("/data") and not is_uri("rel/dir") and not is_uri("C:/data")


def test_temp_files_are_hidden_unless_asked_for(tmp_path):
    store = Storage(tmp_path)
    (tmp_path / ".tmp-crashed").write_bytes(b"half")
    store.write_atomic("done", b"1")
    assert [e.name for e in store.list()] == ["done"]
    assert [e.name for e in store.list(include_temp=True)] == [".tmp-crashed", "done"]


def test_local_publish_leaves_no_temp_dir_on_conflict(tmp_path):
    store = Storage(tmp_path)
    store.publish_dir({"f": b"1"}, "v")
    with pytest.raises(FileExistsError):
        store.publish_dir({"f": b"2"}, "v")
    assert sorted(os.listdir(tmp_path)) == ["v"]
    assert store.read("v/f") == b"1"
