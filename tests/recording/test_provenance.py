"""``snapstore.recording.provenance``: the loader's settings, the sampler's generator state, seeds, versions,
host, and the rank of a distributed run, recorded with each epoch."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import snapstore
from tests.support.datasets import Indexed


def test_provenance(snap_path):
    g = torch.Generator().manual_seed(1234)
    loader = DataLoader(Indexed(10), batch_size=3, sampler=RandomSampler(range(10), generator=g), num_workers=2)
    with snapstore.record(loader, snap_path) as s:
        list(s)
    ep = snapstore.open(snap_path)["train"].epoch(0)
    p = ep.provenance
    assert p["sampler"]["generator"]["seed"] == 1234
    assert p["loader"]["num_workers"] == 2 and p["loader"]["batch_size"] == 3
    assert p["loader"]["sampler"].endswith("RandomSampler") and p["loader"]["collate_fn"].endswith("default_collate")
    assert p["torch_initial_seed"] == torch.initial_seed()
    assert {"torch", "zarr", "numpy"} <= set(p["versions"]) and p["host"]
    assert ep.manifest.started <= ep.manifest.ended
    # the recorded generator state reproduces the epoch's order
    import base64
    state = torch.frombuffer(bytearray(base64.b64decode(p["sampler"]["generator"]["state"])), dtype=torch.uint8)
    g2 = torch.Generator()
    g2.set_state(state)
    assert list(RandomSampler(range(10), generator=g2)) == ep.order.tolist()


def test_distributed_sampler_records_rank_view(snap_path):
    orders = []
    for rank in (0, 1):
        path = snap_path.with_name(f"rank{rank}.snap")
        sampler = DistributedSampler(Indexed(20), num_replicas=2, rank=rank, shuffle=True, seed=5)
        with snapstore.record(DataLoader(Indexed(20), batch_size=4, sampler=sampler), path) as s:
            for e in range(2):
                s.sampler.set_epoch(e)
                list(s)
        ep = snapstore.open(path)["train"].epoch(1)
        assert ep.provenance["rank"] == rank and ep.provenance["world_size"] == 2
        orders.append(ep.order)
    assert sorted(np.concatenate(orders).tolist()) == list(range(20))


def test_process_group_rank_in_provenance(snap_path, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with snapstore.record(DataLoader(Indexed(6), batch_size=3), snap_path) as s:
            list(s)
    finally:
        dist.destroy_process_group()
    p = snapstore.open(snap_path)["train"].epoch(0).provenance
    assert (p["rank"], p["world_size"]) == (0, 1)
