"""The seen= policy: what wrap() accepts, how it round-trips through a manifest, which rows it stores."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapstore.core.manifest import EpochManifest, StreamManifest
from snapstore.core.seen import FULL, SeenPolicy
from snapstore.errors import CorruptionError, UsageError

policies = st.one_of(
    st.sampled_from(["full", "hash"]),
    st.fixed_dictionaries({}, optional={
        "every": st.integers(1, 10),
        "batches": st.floats(0.001, 1.0),
        "indices": st.lists(st.integers(0, 1000), min_size=1, max_size=20),
    }).filter(bool),
)


@given(policies)
def test_a_policy_round_trips_through_both_manifests(seen):
    policy = SeenPolicy.parse(seen)
    stream = StreamManifest("train", False, True, 10, seen=policy)
    assert StreamManifest.from_dict(stream.to_dict(), where="x").seen == policy
    epoch = EpochManifest(0, 0, 0, False, "t", None, {}, seen=policy, where=True)
    back = EpochManifest.from_dict(epoch.to_dict(), where="x")
    assert back.seen == policy and back.where


def test_manifests_written_before_policies_read_as_full():
    d = StreamManifest("train", False, True, 10).to_dict()
    del d["seen"]
    assert StreamManifest.from_dict(d, where="x").seen == FULL
    e = EpochManifest(0, 0, 0, False, "t", None, {}).to_dict()
    del e["seen"], e["where"]
    assert EpochManifest.from_dict(e, where="x").seen == FULL


@pytest.mark.parametrize("seen", ["none", "", {}, {"every": 0}, {"every": 1.5}, {"batches": 0}, {"batches": 1.5},
                                  {"batches": True}, {"indices": [-1]}, {"indices": []}, {"indices": "abc"},
                                  {"each": 2}, 3])
def test_a_bad_policy_is_a_usage_error_naming_the_choices(seen):
    with pytest.raises(UsageError, match="seen='full', seen='hash'"):
        SeenPolicy.parse(seen)


def test_a_damaged_policy_in_a_manifest_is_corruption():
    d = StreamManifest("train", False, True, 10).to_dict()
    d["seen"] = {"mode": "sampled", "every": -3}
    with pytest.raises(CorruptionError, match="'seen'"):
        StreamManifest.from_dict(d, where="x")


def test_which_rows_each_policy_stores():
    idx = np.array([5, 3, 9, 3])
    assert SeenPolicy.parse("full").full_rows(7, 2, idx).all()
    assert not SeenPolicy.parse("hash").full_rows(0, 0, idx).any()
    every = SeenPolicy.parse({"every": 3})
    assert every.full_rows(6, 1, idx).all() and not every.full_rows(7, 1, idx).any()
    tenth = SeenPolicy.parse({"batches": 0.1})
    stored = [b for b in range(100) if tenth.full_rows(1, b, idx).all()]
    assert stored == [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
    probe = SeenPolicy.parse({"indices": [3]})
    np.testing.assert_array_equal(probe.full_rows(4, 0, idx), [False, True, False, True])
    both = SeenPolicy.parse({"every": 2, "indices": [3]})
    assert both.full_rows(2, 0, idx).all()
    np.testing.assert_array_equal(both.full_rows(3, 0, idx), [False, True, False, True])
