import numpy as np
import pytest

from freshrank.learn.replay import ReservoirBuffer


def _rows(start: int, n: int) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + n)
    return {
        "item": ids.astype(np.int64),
        "query": np.stack([ids, ids + 1], axis=1),
        "label": (ids % 2).astype(np.float32),
    }


def test_fills_then_stays_at_capacity():
    buf = ReservoirBuffer(100, seed=1)
    buf.add(_rows(0, 60))
    assert len(buf) == 60 and buf.seen == 60
    buf.add(_rows(60, 1000))
    assert len(buf) == 100 and buf.seen == 1060
    held = buf.rows()
    np.testing.assert_array_equal(held["query"][:, 1], held["item"] + 1)  # rows stay whole


def test_uniform_over_the_stream():
    # Each of 10 equal blocks of the stream should hold about a tenth of the buffer.
    shares = np.zeros(10)
    for seed in range(20):
        buf = ReservoirBuffer(500, seed=seed)
        for block in range(10):
            buf.add(_rows(block * 1000, 1000))
        shares += np.bincount(buf.rows()["item"] // 1000, minlength=10)
    shares /= shares.sum()
    assert np.abs(shares - 0.1).max() < 0.02


def test_same_seed_same_buffer_and_inputs_untouched():
    a, b = ReservoirBuffer(50, seed=3), ReservoirBuffer(50, seed=3)
    rows = _rows(0, 300)
    copy = {k: v.copy() for k, v in rows.items()}
    a.add(rows)
    b.add(rows)
    np.testing.assert_array_equal(a.rows()["item"], b.rows()["item"])
    for k in rows:
        np.testing.assert_array_equal(rows[k], copy[k])


def test_empty_add_and_sample_are_noops():
    buf = ReservoirBuffer(10)
    buf.add({})
    buf.add(_rows(0, 0))
    assert len(buf) == 0 and buf.sample(5) == {}
    assert ReservoirBuffer(0).sample(3) == {}


def test_sample_shapes():
    buf = ReservoirBuffer(20, seed=0)
    buf.add(_rows(0, 20))
    s = buf.sample(7)
    assert s["item"].shape == (7,) and s["query"].shape == (7, 2)
    assert set(s["item"].tolist()) <= set(range(20))


def test_state_roundtrip_continues_identically(tmp_path):
    a = ReservoirBuffer(40, seed=5)
    a.add(_rows(0, 200))
    path = tmp_path / "replay.npz"
    np.savez(path, **a.state_dict())
    with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files}
    b = ReservoirBuffer(40, seed=999)
    b.load_state_dict(state)
    assert b.seen == 200 and len(b) == 40
    a.add(_rows(200, 100))
    b.add(_rows(200, 100))
    np.testing.assert_array_equal(a.rows()["item"], b.rows()["item"])


def test_negative_capacity_rejected():
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBuffer(-1)
