"""``snapstore.auditing.checks``: the audit's pure checks on NumPy arrays, without a snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from snapstore.auditing import checks


def test_outlier_rule_needs_orders_of_magnitude():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 64)).astype(np.float32)
    x[:50, 0] = 40  # 1% of rows with a rare large value, as per-pixel standardisation makes: not a finding
    summary, _ = checks.summarise(x, "float32")
    assert not checks.outlier_rows(summary)[0].any()
    x[[10, 4000], 5] = 5e4
    summary, _ = checks.summarise(x, "float32")
    assert np.nonzero(checks.outlier_rows(summary)[0])[0].tolist() == [10, 4000]


def test_summarise_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3, 4))
    x[3, 1, 1], x[7, 0, 0] = np.nan, -np.inf
    summary, m = checks.summarise(x, "float64")
    halves = [checks.summarise(x[:40], "float64")[1], checks.summarise(x[40:], "float64")[1]]
    merged = halves[0].merge(halves[1]).stats()
    finite = x[np.isfinite(x)]
    for s in (m.stats(), merged):
        assert s.count == finite.size and s.nan == 1 and s.inf == 1
        assert np.isclose(s.mean, finite.mean()) and np.isclose(s.std, finite.std())
        assert s.min == finite.min() and s.max == finite.max()
    assert np.nonzero(summary.nan)[0].tolist() == [3] and np.nonzero(summary.inf)[0].tolist() == [7]


@pytest.mark.parametrize(
    ("provenance", "n", "expected"),
    [
        ({"sampler": {"class": "torch.utils.data.sampler.SequentialSampler"}, "batch_sampler": None}, 10, (1, 1, 0)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4, "drop_last": True,
                            "sampler": {"class": "torch.utils.data.sampler.RandomSampler", "replacement": False,
                                        "num_samples": 10}}}, 10, (1, 1, 2)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4, "drop_last": False,
                            "sampler": {"class": "torch.utils.data.sampler.RandomSampler", "replacement": True,
                                        "num_samples": 10}}}, 10, (0, None, 0)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4, "drop_last": False,
                            "sampler": {"class": "torch.utils.data.sampler.RandomSampler", "replacement": False,
                                        "num_samples": 25}}}, 10, (2, 3, 0)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4,
                            "sampler": {"class": "torch.utils.data.distributed.DistributedSampler", "num_replicas": 2,
                                        "num_samples": 5, "drop_last": False}}}, 10, (0, 1, 0)),
        ({"sampler": {"class": "torch.utils.data.sampler.SequentialSampler"},
          "batch_sampler": {"class": "mylib.BucketBatchSampler"}}, 10, (1, 1, 0)),
    ],
)
def test_sampler_expectation(provenance, n, expected):
    e = checks.sampler_expectation(provenance, n)
    assert (e.min_count, e.max_count, e.missing_allowed) == expected


def test_stability_ignores_augmented_fields():
    order = np.arange(100)
    rng = np.random.default_rng(2)
    augmented = [(e, order, rng.integers(1, 2**63, 100, dtype=np.uint64)) for e in range(3)]
    assert checks.check_stability(augmented, stream="s", field="x", dataset_len=100) == []
    stable = rng.integers(1, 2**63, 100, dtype=np.uint64)
    epochs = [(e, rng.permutation(100), None) for e in range(3)]
    runs = []
    for e, o, _ in epochs:
        h = stable[o].copy()
        if e == 0:
            h[np.nonzero(o == 17)[0]] += np.uint64(1)  # epoch 0 is the odd one out for index 17
        runs.append((e, o, h))
    got = checks.check_stability(runs, stream="s", field="y", dataset_len=100)
    assert [(f.epoch, f.indices) for f in got] == [(0, (17,))]
