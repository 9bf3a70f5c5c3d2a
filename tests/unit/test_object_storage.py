"""The landing zone and the registry on an object store: a real S3 API (moto's server on
127.0.0.1, started once for this module by the ``s3_endpoint`` fixture of test_storage.py),
end to end -- shards written, listed, read (also the way Ray Data reads them), quarantined;
versions published, verified, refused when an object is corrupted, promoted, rolled back,
pinned, logged and pruned; and what a crash leaves behind on a store without rename."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_storage import _new_bucket, s3_endpoint  # noqa: F401  (module-scoped moto server)

from freshrank.core.storage import Storage, StorageOptions
from freshrank.events import FILE_SCHEMA, LandingZone, Simulator, SimulatorConfig
from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.ops.status import collect_status
from freshrank.registry import (
    ChampionChanged,
    CorruptVersion,
    NoRollbackTarget,
    Registry,
    load_latest_or_init,
    load_serving_model,
    promote_if_finite,
    save_checkpoint,
)
from freshrank.registry.store import MANIFEST, MANIFEST_DIGEST

_SMALL = SimulatorConfig(seed=3, n_users=50, n_items=100, n_categories=5, n_brands=7)
CFG = RankerConfig(
    features=FeatureConfig(
        user_buckets=11, item_buckets=13, category_buckets=5, brand_buckets=5, query_buckets=17
    ),
    embedding_dim=4,
)


def _events(n_requests: int = 5, seed: int = 3) -> pa.Table:
    return Simulator(dataclasses.replace(_SMALL, seed=seed)).generate(n_requests)


@pytest.fixture
def bucket(s3_endpoint) -> str:  # noqa: F811
    return _new_bucket(s3_endpoint)


@pytest.fixture
def options(s3_endpoint) -> StorageOptions:  # noqa: F811
    return StorageOptions(s3_endpoint=s3_endpoint)


@pytest.fixture
def zone(bucket, options) -> LandingZone:
    return LandingZone(f"s3://{bucket}/fr/landing", options)


@pytest.fixture
def reg(bucket, options) -> Registry:
    return Registry(f"s3://{bucket}/fr/registry", options)


def _save(reg: Registry, cursor: int, metrics: dict | None = None):
    torch.manual_seed(cursor)
    model = Ranker(CFG)
    opt = torch.optim.Adam(model.parameters())
    return save_checkpoint(
        reg,
        CFG,
        model.state_dict(),
        opt.state_dict(),
        {"rank0/rows/item": np.arange(5) + cursor},
        {
            "cursor": cursor,
            "watermark": 1000.0 + cursor,
            "metrics": metrics or {"loss": 0.5},
            "events_trained": 10 * cursor,
        },
    )


def _kinds(reg: Registry) -> list[tuple]:
    return [(e["kind"], e.get("from_version"), e.get("to_version")) for e in reg.promotions()]


# ---------------------------------------------------------------------------- landing zone


def test_landing_zone_round_trip_on_s3(zone, bucket):
    assert zone.list_shards() == [] and zone.quarantined() == [] and not zone.is_done()
    assert zone.uri == f"s3://{bucket}/fr/landing"
    with pytest.raises(ValueError, match="not a local directory"):
        _ = zone.root

    tables = [_events(3, seed=s) for s in (1, 2, 3)]
    refs = [zone.write_shard(t) for t in tables]
    assert [r.seq for r in refs] == [1, 2, 3]
    assert refs[0].path == f"s3://{bucket}/fr/landing/shard-000000000001.parquet"
    listed = zone.list_shards()
    assert [(r.seq, r.path, r.num_bytes) for r in listed] == [
        (r.seq, r.path, r.num_bytes) for r in refs
    ]
    assert all(abs(a.landed_at - b.landed_at) <= 2 for a, b in zip(listed, refs, strict=True))
    assert all(abs(r.landed_at - time.time()) < 60 for r in listed)
    assert [r.seq for r in zone.list_shards(after=2)] == [3]

    for ref, table in zip(listed, tables, strict=True):
        read = zone.read_shard(ref)
        assert read.table.schema == FILE_SCHEMA and read.table.equals(table)
        assert read.rows_total == table.num_rows

    # explicit sequence numbers are never overwritten on S3 either (one writer: HEAD then PUT)
    assert zone.write_shard(_events(1), seq=10).seq == 10
    with pytest.raises(FileExistsError, match="seq 10 already exists"):
        zone.write_shard(_events(2), seq=10)
    assert zone.write_shard(_events(1)).seq == 11

    zone.mark_done()
    assert zone.is_done() and [r.seq for r in zone.list_shards()] == [1, 2, 3, 10, 11]
    zone.clear_done()
    assert not zone.is_done()


def test_read_source_is_what_ray_data_reads(zone, bucket):
    tables = [_events(2, seed=s) for s in (4, 5)]
    refs = [zone.write_shard(t) for t in tables]
    paths, fs = zone.read_source([r.path for r in refs])
    assert paths == [f"{bucket}/fr/landing/{r.name}" for r in refs]
    assert fs is zone.storage.fs
    # Ray pickles the filesystem to its workers: the copy must reach the same endpoint.
    remote = pickle.loads(pickle.dumps(fs))
    got = [pq.read_table(p, filesystem=remote) for p in paths]
    assert all(g.equals(t) for g, t in zip(got, tables, strict=True))
    # one dataset over all paths, as read_parquet(paths, filesystem=fs) plans it
    assert pq.ParquetDataset(paths, filesystem=remote).read().num_rows == sum(
        t.num_rows for t in tables
    )
    assert zone.read_source([refs[0].name]) == ([paths[0]], fs)  # a bare shard name works too
    with pytest.raises(ValueError, match="not a shard of the landing zone"):
        zone.read_source([f"s3://{bucket}/elsewhere/{refs[0].name}"])
    with pytest.raises(ValueError, match="not a shard name"):
        zone.read_source([f"s3://{bucket}/fr/landing/_PRODUCER_DONE"])


def test_bad_shards_are_quarantined_on_s3(zone):
    good = zone.write_shard(_events(4))
    garbage = zone.write_raw(b"not parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(_events(4), sink)
    truncated = zone.write_raw(sink.getvalue().to_pybytes()[:-20])

    kept = [r for r in (zone.validate(ref) for ref in zone.list_shards()) if r is not None]
    assert [r.ref.seq for r in kept] == [good.seq]
    assert [r.seq for r in zone.list_shards()] == [good.seq]
    reasons = dict(zone.quarantined())
    assert sorted(reasons) == sorted([garbage.name, truncated.name])
    assert all(reason.startswith("not readable as parquet") for reason in reasons.values())
    assert zone.quarantined_seqs() == {garbage.seq, truncated.seq}
    # a second reader that still holds the old ref sees it is gone, not a crash
    assert zone.validate(garbage) is None
    assert zone.quarantine(garbage, "again") == f"{zone.uri}/quarantine/{garbage.name}"
    # quarantined numbers are never reused
    assert zone.write_shard(_events(1)).seq == truncated.seq + 1
    with pytest.raises(FileExistsError, match="quarantine"):
        zone.write_shard(_events(1), seq=garbage.seq)


def test_quarantine_completes_a_move_interrupted_between_copy_and_delete(zone):
    bad = zone.write_raw(b"garbage bytes")
    # what a crash after the server-side copy and before the delete leaves: both objects
    zone.storage.write_atomic(f"quarantine/{bad.name}", b"garbage bytes")
    assert [r.seq for r in zone.list_shards()] == [bad.seq]
    assert zone.validate(bad) is None
    assert zone.list_shards() == []
    assert [name for name, _ in zone.quarantined()] == [bad.name]  # no .dup1 copy


def test_status_reads_s3_locations_through_the_environment(zone, reg, s3_endpoint, monkeypatch):  # noqa: F811
    """``freshrank status --registry s3://... --landing s3://...`` with the endpoint in env."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    zone.write_shard(_events(2))
    zone.write_raw(b"bad")
    zone.validate(zone.list_shards()[-1])
    _save(reg, cursor=0)
    reg.set_champion(1, reason="first")
    status = collect_status(reg.uri, zone.uri, None)
    assert status.versions == 1 and status.champion.version == 1
    assert status.backlog_shards == 1 and len(status.quarantined) == 1


# -------------------------------------------------------------------------------- registry


def test_registry_publish_verify_load_on_s3(reg, bucket):
    assert reg.list_versions() == [] and load_latest_or_init(reg) is None
    with pytest.raises(ValueError, match="not a local directory"):
        _ = reg.root
    v1, v2 = _save(reg, 1), _save(reg, 2)
    assert (v1.version, v2.version) == (1, 2) and v2.manifest["parent"] == 1
    assert v2.path == f"s3://{bucket}/fr/registry/versions/v000002"
    assert reg.list_versions() == [1, 2] and reg.latest_version() == 2
    names = sorted(e.name for e in reg.storage.list("versions/v000002"))
    assert names == sorted(["model.pt", "optimizer.pt", "replay.npz", MANIFEST, MANIFEST_DIGEST])

    state = load_latest_or_init(reg)
    assert (state.version, state.cursor, state.events_trained) == (2, 2, 20)
    np.testing.assert_array_equal(state.replay_state["rank0/rows/item"], np.arange(5) + 2)
    torch.manual_seed(2)
    expected = Ranker(CFG).state_dict()
    assert all(torch.equal(state.model_state[k], expected[k]) for k in expected)
    served = load_serving_model(reg, 1)
    assert served.version == 1 and served.watermark == 1001.0 and not served.model.training
    with pytest.raises(FileExistsError, match="version 2 already exists"):
        reg.publish({"model.pt": b"x"}, {}, version=2)
    reg.write_trainer_status({"state": "ready", "cursor": 2})
    assert reg.trainer_status()["state"] == "ready"


@pytest.mark.parametrize("damage", ["flip-bytes", "truncate", "delete", "tamper-manifest"])
def test_corrupt_objects_are_refused_on_s3(reg, damage):
    _save(reg, 1)
    _save(reg, 2)
    base = "versions/v000002"
    if damage == "flip-bytes":  # same size, other bytes: only the sha256 catches it
        data = bytearray(reg.storage.read(f"{base}/model.pt"))
        data[100:103] = bytes(b ^ 0xFF for b in data[100:103])
        reg.storage.write_atomic(f"{base}/model.pt", bytes(data))
        match = "model.pt fails its sha256"
    elif damage == "truncate":
        data = reg.storage.read(f"{base}/replay.npz")
        reg.storage.write_atomic(f"{base}/replay.npz", data[: len(data) // 2])
        match = "replay.npz has"
    elif damage == "delete":
        reg.storage.delete(f"{base}/optimizer.pt")
        match = "optimizer.pt is missing"
    else:
        manifest = json.loads(reg.storage.read(f"{base}/{MANIFEST}"))
        manifest["metrics"]["loss"] = 0.01  # a better-looking version
        reg.storage.write_atomic(f"{base}/{MANIFEST}", json.dumps(manifest).encode())
        match = "manifest.json fails its sha256"
    with pytest.raises(CorruptVersion, match=match):
        reg.verify(2)
    with pytest.raises(CorruptVersion):
        load_serving_model(reg, 2)
    with pytest.raises(CorruptVersion):
        reg.set_champion(2)
    assert reg.champion_version() is None
    assert load_latest_or_init(reg).version == 1  # the trainer falls back


def test_object_replaced_after_verify_is_refused_at_load(reg):
    info = _save(reg, 1)
    verified = reg.verify(1)
    other = _save(reg, 2)
    reg.storage.write_atomic(
        "versions/v000001/model.pt", reg.storage.read("versions/v000002/model.pt")
    )
    with pytest.raises(CorruptVersion, match="model.pt fails its sha256"):
        reg.load_torch(verified, "model.pt")
    assert info.version == 1 and other.version == 2


def test_unfinished_publish_is_invisible_and_never_reused(reg):
    """A publish that crashed before its marker: files without manifest checksum."""
    _save(reg, 1)
    reg.storage.write_atomic("versions/v000002/model.pt", b"half a publish")
    reg.storage.write_atomic(f"versions/v000002/{MANIFEST}", b"{}")  # no digest: not published
    assert reg.list_versions() == [1]
    assert load_latest_or_init(reg).version == 1
    assert _save(reg, 3).version == 3  # the crashed number is skipped, its leftovers untouched
    assert reg.list_versions() == [1, 3]
    # Pruning sweeps unmarked prefixes once they are old (an hour; here: any age).
    assert reg.storage.sweep("versions", marker=MANIFEST_DIGEST, min_age_s=3600) == 0
    assert reg.storage.sweep("versions", marker=MANIFEST_DIGEST, min_age_s=0) == 1
    assert not reg.storage.exists("versions/v000002/model.pt")
    assert reg.list_versions() == [1, 3]


def test_champion_rollback_pin_and_log_on_s3(reg):
    for c in range(1, 5):
        _save(reg, c, metrics={"loss": float("nan")} if c == 4 else None)
    assert promote_if_finite(reg, reg.get(1)) is True
    reg.set_champion(2, reason="better auc", expected=1)
    with pytest.raises(ChampionChanged):
        reg.set_champion(3, expected=1)
    reg.set_champion(3)
    assert promote_if_finite(reg, reg.get(4)) is False
    assert json.loads(reg.storage.read("CHAMPION"))["version"] == 3

    assert reg.rollback(reason="v3 hurts ctr") == 2
    assert reg.rollback() == 1  # 3 was rolled back from
    with pytest.raises(NoRollbackTarget):
        reg.rollback()
    reg.pin(3, reason="incident")
    assert reg.serving_target() == 3 and reg.champion_version() == 1
    assert reg.unpin(reason="resolved") == 3
    assert reg.serving_target() == 1 and not reg.storage.exists("PINNED")

    assert _kinds(reg) == [
        ("promoted", None, 1),
        ("promoted", 1, 2),
        ("promoted", 2, 3),
        ("rejected", 3, 4),
        ("rolled_back", 3, 2),
        ("rolled_back", 2, 1),
        ("pinned", None, 3),
        ("unpinned", 3, 1),
    ]
    # one object per event (an object store cannot append), named so that names sort by time
    objects = [e.name for e in reg.storage.list("promotions")]
    assert len(objects) == 8 and objects == sorted(objects)
    assert not reg.storage.exists("promotions.jsonl")
    ats = [e["at"] for e in reg.promotions()]
    assert ats == sorted(ats)
    # a fresh reader (another process) sees the same log
    assert _kinds(Registry(reg.uri, reg.storage.options)) == _kinds(reg)


def test_log_merges_a_copied_jsonl_with_event_objects(reg):
    """A registry copied from a local disk keeps its promotions.jsonl; new events are objects."""
    old = {"at": 1.0, "kind": "promoted", "from_version": None, "to_version": 1, "reason": "x"}
    reg.storage.write_atomic("promotions.jsonl", (json.dumps(old) + "\n").encode())
    reg.log_event("error", reason="window failed")
    assert [e["kind"] for e in reg.promotions()] == ["promoted", "error"]


def test_prune_on_s3(reg):
    for c in range(1, 9):
        _save(reg, c)
    reg.set_champion(2)
    reg.set_champion(3)  # rollback target is now 2
    reg.pin(5)
    assert reg.prune(keep_last=2) == [1, 4, 6]
    assert reg.list_versions() == [2, 3, 5, 7, 8]
    assert not [e for e in reg.storage.list("versions") if e.name in ("v000001", "v000004")]
    assert reg.promotions()[-1]["kind"] == "pruned"
    assert reg.prune(keep_last=2) == []
    reg.verify(3)


def test_checksums_are_recorded_for_every_object(reg):
    info = _save(reg, 1)
    for name, entry in info.manifest["files"].items():
        data = reg.storage.read(f"versions/v000001/{name}")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])
    raw = reg.storage.read(f"versions/v000001/{MANIFEST}")
    assert reg.storage.read(f"versions/v000001/{MANIFEST_DIGEST}") == (
        hashlib.sha256(raw).hexdigest().encode()
    )


def test_landing_zone_and_registry_share_a_bucket(bucket, options):
    """Both under one prefix: neither sees the other's objects."""
    root = Storage(f"s3://{bucket}/line", options)
    zone = LandingZone(root.child("landing").uri, options)
    reg = Registry(root.child("registry").uri, options)
    zone.write_shard(_events(1))
    _save(reg, 1)
    assert [r.seq for r in zone.list_shards()] == [1] and reg.list_versions() == [1]
    assert sorted(e.name for e in root.list()) == ["landing", "registry"]


def test_trainer_lease_and_stop_flag_on_s3(bucket, options):
    from freshrank.registry.control import FencedOut, TrainerControl

    uri = f"s3://{bucket}/registry"
    first = TrainerControl(uri, options)
    assert first.holder() is None and not first.stop_requested()
    epoch = first.claim()
    first.check(epoch)  # still the holder
    second = TrainerControl(uri, options).claim()  # a restarted job takes the lease
    with pytest.raises(FencedOut, match=second):
        first.check(epoch)
    first.request_stop("ray job stop")
    assert TrainerControl(uri, options).stop_requested()
    assert json.loads(Storage(uri, options).read("STOP"))["reason"] == "ray job stop"
    first.clear_stop()
    assert not first.stop_requested()
