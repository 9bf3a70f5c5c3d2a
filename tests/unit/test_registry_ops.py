"""Registry operations: retention, rollback, pinning, the promotion log, refusing corruption."""

import json

import numpy as np
import pytest
import torch

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import (
    ChampionChanged,
    CorruptVersion,
    NoRollbackTarget,
    Registry,
    load_latest_or_init,
    load_serving_model,
    save_checkpoint,
)
from freshrank.registry.store import MANIFEST, MANIFEST_DIGEST

CFG = RankerConfig(
    features=FeatureConfig(
        user_buckets=11, item_buckets=13, category_buckets=5, brand_buckets=5, query_buckets=17
    ),
    embedding_dim=4,
)


def _save(reg, cursor=1):
    model = Ranker(CFG)
    opt = torch.optim.Adam(model.parameters())
    return save_checkpoint(
        reg,
        CFG,
        model.state_dict(),
        opt.state_dict(),
        {"rank0/rows/item": np.arange(5)},
        {"cursor": cursor, "watermark": 1.0, "metrics": {"loss": 0.5}, "events_trained": 1},
    )


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "reg")


def _versions(reg, n):
    return [_save(reg, i).version for i in range(n)]


def _kinds(reg):
    return [(e["kind"], e.get("from_version"), e.get("to_version")) for e in reg.promotions()]


# ----- retention -----------------------------------------------------------------------------


def test_prune_keeps_last_n_champion_pin_and_rollback_target(reg):
    _versions(reg, 10)
    reg.set_champion(2)
    reg.set_champion(3)  # rollback target is now 2
    reg.pin(5)
    removed = reg.prune(keep_last=2)
    assert removed == [1, 4, 6, 7, 8]
    assert reg.list_versions() == [2, 3, 5, 9, 10]
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".")]
    assert reg.promotions()[-1]["kind"] == "pruned"
    assert reg.promotions()[-1]["versions"] == removed
    assert reg.prune(keep_last=2) == []  # idempotent
    reg.verify(3)  # survivors intact


def test_prune_refuses_nonsense(reg):
    with pytest.raises(ValueError, match="keep_last"):
        reg.prune(0)


def test_prune_on_empty_registry(reg):
    assert reg.prune(3) == [] and reg.list_versions() == []


# ----- promotion log, rollback -----------------------------------------------------------------


def test_log_records_when_from_to_why(reg):
    _versions(reg, 2)
    reg.set_champion(1, reason="first")
    reg.set_champion(2, reason="better auc")
    last = reg.promotions()[-1]
    assert last["kind"] == "promoted" and last["from_version"] == 1 and last["to_version"] == 2
    assert last["reason"] == "better auc" and isinstance(last["at"], float)
    with pytest.raises(ValueError, match="unknown promotion log kind"):
        reg.log_event("promoted-ish")


def test_rollback_defaults_to_previous_champion_and_walks_back(reg):
    _versions(reg, 4)
    for v in (1, 2, 3, 4):
        reg.set_champion(v)
    assert reg.rollback(reason="v4 hurts ctr") == 3
    assert reg.champion_version() == 3
    assert reg.rollback() == 2  # 4 was rolled back from: never a default target
    assert _kinds(reg)[-2:] == [("rolled_back", 4, 3), ("rolled_back", 3, 2)]
    assert reg.promotions()[-2]["reason"] == "v4 hurts ctr"
    reg.set_champion(4, reason="fixed")  # promoting again clears the rolled-back mark
    assert reg.rollback_target() == 2  # 3 was rolled back from, 4 is current


def test_rollback_to_named_version_and_skips_corrupt_or_pruned(reg):
    _versions(reg, 3)
    for v in (1, 2, 3):
        reg.set_champion(v)
    (reg.get(2).path / "model.pt").write_bytes(b"x")  # 2 is corrupt: skipped
    assert reg.rollback_target() == 1
    with pytest.raises(CorruptVersion):
        reg.rollback(to_version=2)
    assert reg.champion_version() == 3  # a refused rollback moves nothing
    assert reg.rollback(to_version=1) == 1
    with pytest.raises(NoRollbackTarget):
        reg.rollback()


def test_rollback_without_history(reg):
    _versions(reg, 1)
    with pytest.raises(NoRollbackTarget):
        reg.rollback()
    reg.set_champion(1)
    with pytest.raises(NoRollbackTarget):
        reg.rollback()


def test_compare_and_set_champion(reg):
    _versions(reg, 3)
    reg.set_champion(1)
    reg.set_champion(2, expected=1)
    with pytest.raises(ChampionChanged):
        reg.set_champion(3, expected=1)
    assert reg.champion_version() == 2


# ----- pin -------------------------------------------------------------------------------------


def test_pin_and_unpin_set_the_serving_target(reg):
    _versions(reg, 3)
    reg.set_champion(3)
    assert reg.serving_target() == 3 and reg.pinned_version() is None
    reg.pin(1, reason="incident 42")
    assert reg.serving_target() == 1 and reg.champion_version() == 3
    assert json.loads((reg.root / "PINNED").read_text())["version"] == 1
    assert reg.unpin(reason="resolved") == 1
    assert reg.serving_target() == 3 and not (reg.root / "PINNED").exists()
    assert reg.unpin() is None
    assert _kinds(reg)[-2:] == [("pinned", None, 1), ("unpinned", 1, 3)]


def test_pin_refuses_missing_or_corrupt(reg):
    _versions(reg, 1)
    (reg.get(1).path / "replay.npz").write_bytes(b"")
    with pytest.raises(CorruptVersion):
        reg.pin(1)
    with pytest.raises(KeyError):
        reg.pin(9)
    assert reg.pinned_version() is None


# ----- refusing corrupt versions ----------------------------------------------------------------

FILES = ["model.pt", "optimizer.pt", "replay.npz", MANIFEST, MANIFEST_DIGEST]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("keep", [0, 1, 0.5])
def test_truncating_any_file_refuses_the_version(reg, name, keep):
    _save(reg, 1)
    info = _save(reg, 2)
    path = info.path / name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:-1])
    with pytest.raises(CorruptVersion):
        reg.verify(2)
    with pytest.raises(CorruptVersion):
        load_serving_model(reg, 2)
    with pytest.raises(CorruptVersion):
        reg.set_champion(2)
    assert reg.champion_version() is None
    assert load_latest_or_init(reg).version == 1  # the trainer falls back


@pytest.mark.parametrize("name", FILES)
def test_deleting_any_file_refuses_the_version(reg, name):
    info = _save(reg, 1)
    (info.path / name).unlink()
    with pytest.raises((CorruptVersion, KeyError)):
        load_serving_model(reg, 1)


def _tamper(info, edit, fix_digest=False):
    import hashlib

    manifest = json.loads((info.path / MANIFEST).read_text())
    edit(manifest)
    raw = json.dumps(manifest).encode()
    (info.path / MANIFEST).write_bytes(raw)
    if fix_digest:
        (info.path / MANIFEST_DIGEST).write_text(hashlib.sha256(raw).hexdigest())


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["metrics"].update(loss=0.01),  # a better-looking version
        lambda m: m.update(cursor=999),
        lambda m: m["files"]["model.pt"].update(sha256="0" * 64),
        lambda m: m["files"].pop("optimizer.pt"),
    ],
)
def test_tampered_manifest_is_refused(reg, edit):
    info = _save(reg, 1)
    _tamper(info, edit)
    with pytest.raises(CorruptVersion, match="manifest.json fails its sha256"):
        load_serving_model(reg, 1)


def test_consistent_tampering_still_fails_the_file_checks(reg):
    info = _save(reg, 1)
    other = _save(reg, 2)
    # swap in another version's weights and fix the manifest's own checksum: sizes match but
    # the weights' sha256 does not
    (info.path / "model.pt").write_bytes((other.path / "model.pt").read_bytes())
    _tamper(info, lambda m: m.update(note="x"), fix_digest=True)
    with pytest.raises(CorruptVersion, match="model.pt fails its sha256"):
        load_serving_model(reg, 1)
    # a manifest that drops the weights entirely is refused for serving
    _tamper(other, lambda m: m["files"].pop("model.pt"), fix_digest=True)
    with pytest.raises(CorruptVersion, match="lacks required file model.pt"):
        load_serving_model(reg, 2)
    # a manifest copied from another version
    third = _save(reg, 3)
    _tamper(third, lambda m: m.update(version=1), fix_digest=True)
    with pytest.raises(CorruptVersion, match="names version 1"):
        reg.verify(3)


def test_garbage_manifest_is_corrupt_not_a_crash(reg):
    info = _save(reg, 1)
    (info.path / MANIFEST).write_bytes(b"\x00\xff{")
    with pytest.raises(CorruptVersion):
        reg.verify(1)
    with pytest.raises(CorruptVersion):
        reg.get(1)


def test_prune_sweeps_leftovers_of_crashed_writers(reg):
    import os
    import time

    _versions(reg, 2)
    stale, fresh = reg.versions_dir / ".tmp-crashed", reg.versions_dir / ".tmp-inflight"
    legacy = reg.versions_dir / ".trash-0123"  # an earlier release's prune, interrupted
    for d in (stale, fresh, legacy):
        d.mkdir()
        (d / "model.pt").write_bytes(b"x")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    assert reg.prune(keep_last=5) == []
    assert sorted(p.name for p in reg.versions_dir.iterdir()) == [
        ".tmp-inflight",
        "v000001",
        "v000002",
    ]
