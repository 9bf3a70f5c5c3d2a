import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from freshrank.features.hashing import bucket_of, hash_buckets, stable_hash64

IDS = ["u1", "u2", "item-999", "ünïcödé", "a" * 200]


def test_same_buckets_in_another_process():
    # Built-in hash() is salted per process; ours must not be.
    code = (
        "from freshrank.features.hashing import bucket_of;"
        f"print([bucket_of(v, 'user', 50000) for v in {IDS!r}])"
    )
    env_seeds = []
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        env_seeds.append(out.strip())
    here = str([bucket_of(v, "user", 50000) for v in IDS])
    assert env_seeds[0] == env_seeds[1] == here


def test_vectorised_matches_scalar_and_handles_missing():
    values = pa.array(["a", None, "b", "a", "", "c"] * 3)
    got = hash_buckets(values, "item", 1000)
    want = [bucket_of(v, "item", 1000) for v in values.to_pylist()]
    assert got.tolist() == want
    assert got[1] == 0 and got[4] == 0
    assert ((got == 0) | ((got >= 1) & (got < 1000))).all()


def test_chunked_and_sliced_inputs():
    chunked = pa.chunked_array([["x", "y"], ["z"]])
    assert hash_buckets(chunked, "s", 97).tolist() == [bucket_of(v, "s", 97) for v in "xyz"]
    sliced = pa.array(["p", "q", "r", "s"]).slice(1, 2)
    assert hash_buckets(sliced, "s", 97).tolist() == [bucket_of(v, "s", 97) for v in "qr"]


def test_salt_separates_features():
    a = np.array([stable_hash64(f"v{i}", "user") % 1000 for i in range(200)])
    b = np.array([stable_hash64(f"v{i}", "item") % 1000 for i in range(200)])
    assert (a != b).mean() > 0.9


def test_spread_is_near_uniform():
    buckets = hash_buckets([f"id{i}" for i in range(20000)], "item", 101)
    counts = np.bincount(buckets, minlength=101)[1:]
    assert counts.min() > 120 and counts.max() < 280  # mean 200


def test_bad_bucket_count():
    with pytest.raises(ValueError, match="buckets must be >= 2"):
        hash_buckets(["a"], "x", 1)


def test_hash_keys_are_the_blake2b_hash_on_every_input_kind():
    from freshrank.features.hashing import MISSING_KEY, hash_keys, key_of

    values = ["a", None, "ünï", "", "a" * 5000, "a"]
    want = [MISSING_KEY if not v else stable_hash64(v, "item") for v in values]
    assert [key_of(v, "item") for v in values] == want
    assert hash_keys(values, "item").tolist() == want
    assert hash_keys(pa.array(values), "item").tolist() == want
    assert hash_keys(pa.array(values, pa.large_string()), "item").tolist() == want
    assert hash_keys(pa.chunked_array([values[:2], values[2:]]), "item").tolist() == want
    assert hash_keys(np.array(["a", "ünï"]), "item").tolist() == [want[0], want[2]]
    out = hash_keys(pa.array([], pa.string()), "item")
    assert out.dtype == np.uint64 and len(out) == 0
    assert hash_keys(values, "item").dtype == np.uint64
    assert hash_keys(["a"], "user")[0] != hash_keys(["a"], "item")[0]
