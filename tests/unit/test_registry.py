import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from freshrank.features.encode import FeatureConfig
from freshrank.model.config import RankerConfig
from freshrank.model.ranker import Ranker
from freshrank.registry import (
    CorruptVersion,
    Registry,
    load_latest_or_init,
    load_serving_model,
    promote_if_finite,
    save_checkpoint,
)

CFG = RankerConfig(
    features=FeatureConfig(
        user_buckets=11, item_buckets=13, category_buckets=5, brand_buckets=5, query_buckets=17
    ),
    embedding_dim=4,
)


def _save(reg, cursor, metrics=None, events=10):
    model = Ranker(CFG)
    opt = torch.optim.Adam(model.parameters())
    return save_checkpoint(
        reg,
        CFG,
        model.state_dict(),
        opt.state_dict(),
        {"rank0/rows/item": np.arange(5)},
        {
            "cursor": cursor,
            "watermark": 1000.0 + cursor,
            "metrics": metrics or {"loss": 0.5, "eval_auc": 0.7},
            "events_trained": events,
        },
    )


def test_first_run_has_nothing(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert load_latest_or_init(reg) is None
    assert reg.list_versions() == [] and reg.champion_version() is None


def test_publish_load_and_resume(tmp_path):
    reg = Registry(tmp_path)
    v1 = _save(reg, cursor=3)
    v2 = _save(reg, cursor=7, events=25)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.manifest["parent"] == 1
    state = load_latest_or_init(reg)
    assert state.version == 2 and state.cursor == 7 and state.events_trained == 25
    assert state.model_config == CFG
    np.testing.assert_array_equal(state.replay_state["rank0/rows/item"], np.arange(5))
    files = v2.manifest["files"]
    assert set(files) == {"model.pt", "optimizer.pt", "replay.npz"}
    assert all(len(f["sha256"]) == 64 for f in files.values())


def test_corrupt_file_is_refused_and_resume_falls_back(tmp_path):
    reg = Registry(tmp_path)
    _save(reg, cursor=1)
    v2 = _save(reg, cursor=2)
    with open(v2.path / "model.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CorruptVersion, match="sha256"):
        load_serving_model(reg, 2)
    v3 = _save(reg, cursor=3)
    (v3.path / "replay.npz").write_bytes(b"short")  # truncated
    with pytest.raises(CorruptVersion, match="replay.npz has 5 bytes"):
        reg.verify(3)
    assert load_latest_or_init(reg).version == 1


def test_serving_model_loads_weights_only(tmp_path):
    reg = Registry(tmp_path)
    info = _save(reg, cursor=1)
    served = load_serving_model(reg, info.version)
    assert served.version == 1 and served.watermark == 1001.0
    assert not served.model.training


def test_promotion_needs_finite_metrics(tmp_path):
    reg = Registry(tmp_path)
    good = _save(reg, 1)
    bad = _save(reg, 2, metrics={"loss": float("nan")})
    assert promote_if_finite(reg, good) is True
    assert promote_if_finite(reg, bad) is False
    assert reg.champion_version() == 1
    kinds = [(e["kind"], e["to_version"]) for e in reg.promotions()]
    assert kinds == [("promoted", 1), ("rejected", 2)]


def test_champion_pointer_is_replaced_atomically(tmp_path):
    reg = Registry(tmp_path)
    for c in range(1, 4):
        _save(reg, c)
    reg.set_champion(3)
    raw = json.loads((tmp_path / "CHAMPION").read_text())
    assert raw["version"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(KeyError):
        reg.set_champion(99)


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    reg = Registry(tmp_path)
    out = []
    threads = [threading.Thread(target=lambda: out.append(_save(reg, 1).version)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [1, 2, 3, 4, 5, 6] == reg.list_versions()


def test_manifest_needs_cursor(tmp_path):
    with pytest.raises(ValueError, match="cursor"):
        save_checkpoint(Registry(tmp_path), CFG, {}, None, {}, {"metrics": {}})


def test_bytes_replaced_after_verify_are_refused_at_load(tmp_path):
    reg = Registry(tmp_path)
    _save(reg, cursor=1)
    other = _save(reg, cursor=2, metrics={"loss": 0.4})
    info = reg.verify(1)
    (info.path / "model.pt").write_bytes((other.path / "model.pt").read_bytes())
    with pytest.raises(CorruptVersion, match="model.pt fails its sha256"):
        reg.load_torch(info, "model.pt")
    with pytest.raises(CorruptVersion, match="lists no file"):
        reg.load_torch(info, "extra.pt")


def test_a_directory_without_manifest_checksum_is_not_a_version(tmp_path):
    reg = Registry(tmp_path)
    _save(reg, cursor=1)
    (tmp_path / "versions" / "v000002").mkdir()
    (tmp_path / "versions" / "v000002" / "model.pt").write_bytes(b"left by hand")
    (tmp_path / "versions" / "v000002" / "manifest.json").write_text("{}")
    assert reg.list_versions() == [1]
    assert _save(reg, cursor=3).version == 3  # its number is never written into
    assert reg.list_versions() == [1, 3]


def test_a_local_registry_is_a_path_and_a_file_uri_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reg = Registry("reg")
    info = _save(reg, cursor=1)
    assert reg.root == Path("reg") and reg.is_local
    assert info.path == Path("reg") / "versions" / "v000001"
    assert reg.uri == str(tmp_path / "reg")
    same = Registry(f"file://{tmp_path}/reg")
    assert same.root == tmp_path / "reg" and same.list_versions() == [1]


def test_a_log_line_being_appended_is_not_read_yet(tmp_path):
    reg = Registry(tmp_path)
    reg.log_event("error", reason="first")
    with open(tmp_path / "promotions.jsonl", "a") as f:
        f.write('{"at": 2.0, "kind": "err')  # a writer caught mid-line
    assert [e["reason"] for e in reg.promotions()] == ["first"]
