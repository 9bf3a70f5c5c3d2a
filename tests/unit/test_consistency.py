"""The cross-rank state digest, without Ray: what makes two ranks' digests equal or different,
and the check rank 0 runs before publishing a window's version."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from _tiny import MODEL, _model

from freshrank.learn.consistency import RankState, check_ranks, rank_state, state_digest
from freshrank.model.ranker import Ranker


def test_equal_models_have_equal_digests_and_one_changed_weight_changes_it():
    a, b = _model(0), _model(0)
    digest = state_digest(a)
    assert len(digest) == 64 and int(digest, 16) >= 0  # sha256, hex
    assert state_digest(b) == digest
    # A model built otherwise but loaded with the same state (what a restarted rank does).
    torch.manual_seed(99)
    c = Ranker(MODEL)
    assert state_digest(c) != digest
    c.load_state_dict(copy.deepcopy(a.state_dict()))
    assert state_digest(c) == digest
    # One element of one parameter, by the smallest step a float32 can take.
    name, param = next(iter(b.named_parameters()))
    with torch.no_grad():
        flat = param.view(-1)
        flat[3] = torch.nextafter(flat[3], torch.tensor(float("inf")))
    assert state_digest(b) != digest, name
    assert state_digest(a) == digest  # hashing does not change what it hashes


def test_a_changed_buffer_changes_the_digest():
    a, b = _model(0), _model(0)
    buffers = dict(b.named_buffers())
    assert buffers, "the ranker has buffers (its interaction pairs)"
    name, buf = next(iter(buffers.items()))
    before = state_digest(b)
    assert before == state_digest(a)
    buf.view(-1)[0] += 1
    assert state_digest(b) != before, name


def test_the_digest_covers_names_shapes_and_dtypes_not_just_bytes():
    """Same bytes under another name, shape or dtype is another state."""

    def holder(**tensors: torch.Tensor) -> torch.nn.Module:
        m = torch.nn.Module()
        for key, t in tensors.items():
            m.register_buffer(key, t)
        return m

    zeros = torch.zeros(4, dtype=torch.float32)
    digests = {
        state_digest(holder(w=zeros)),
        state_digest(holder(v=zeros)),
        state_digest(holder(w=zeros.reshape(2, 2))),
        state_digest(holder(w=zeros.view(torch.int32))),
        state_digest(holder(w=zeros[:2], x=zeros[2:])),
    }
    assert len(digests) == 5
    # The digest is a plain function of the state: nothing random, nothing per process.
    assert state_digest(holder(w=zeros)) == state_digest(holder(w=torch.zeros(4)))
    # And it is over the tensors' bytes (a known value for an empty module).
    assert state_digest(torch.nn.Module()) == hashlib.sha256().hexdigest()


def test_extra_arrays_count_in_key_order():
    m = _model(0)
    ids = np.arange(10, dtype=np.int64)
    base = state_digest(m)
    with_ids = state_digest(m, {"item_ids": ids})
    assert with_ids != base
    assert state_digest(m, {"item_ids": ids.copy()}) == with_ids
    changed = ids.copy()
    changed[7] = 70
    assert state_digest(m, {"item_ids": changed}) != with_ids
    assert state_digest(m, {"user_ids": ids}) != with_ids  # the key counts
    assert state_digest(m, {"item_ids": ids.astype(np.int32)}) != with_ids  # the dtype counts
    two = {"a": ids, "b": ids[::-1]}
    assert state_digest(m, two) == state_digest(m, dict(reversed(two.items())))
    assert state_digest(m, {"a": ids[::2]}) == state_digest(m, {"a": ids[::2].copy()})
    with pytest.raises(ValueError, match="Python objects"):
        state_digest(m, {"names": np.array(["a", None], dtype=object)})


def test_check_ranks_records_every_rank_or_refuses_diverged_ones():
    m = _model(0)
    state = rank_state(m)
    assert state == RankState(state_digest(m), None)  # no node named: none recorded
    assert rank_state(m, node_id="n7") == RankState(state_digest(m), "n7")
    fields = check_ranks([RankState("d1", "n0"), RankState("d1", "n1")], 4)
    assert fields == {"rank_digests": ["d1", "d1"], "rank_nodes": ["n0", "n1"]}
    diverged = [RankState("a" * 64, "n0"), RankState("a" * 64, "n1"), RankState("b" * 64, "n2")]
    with pytest.raises(RuntimeError, match=r"ranks diverged after window 7: .*rank 2 \(node n2\)"):
        check_ranks(diverged, 7)
