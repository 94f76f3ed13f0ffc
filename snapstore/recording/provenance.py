"""Where recorded data came from: loader configuration, sampler state, seeds, versions, host.

Everything returned is plain JSON (generator states as base64 of
``torch.Generator.get_state()`` bytes), so it is readable with plain zarr.
"""

from __future__ import annotations

import base64
import datetime
import os
import platform
import socket
from importlib import metadata
from typing import Any

import torch
import torch.distributed as dist

_SAMPLER_ATTRS = ("seed", "epoch", "shuffle", "replacement", "num_samples", "num_replicas", "rank", "drop_last",
                  "batch_size")


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape what is recorded."""
    out = {"python": platform.python_version()}
    for name in ("snapstore", "torch", "numpy", "zarr", "numcodecs"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _name(obj: Any) -> str | None:
    if obj is None:
        return None
    t = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(t, '__module__', '?')}.{getattr(t, '__qualname__', repr(t))}"


def generator_state(g: Any) -> dict[str, Any] | None:
    """Seed and full state of a ``torch.Generator`` (state as base64), or None."""
    if not isinstance(g, torch.Generator):
        return None
    return {"seed": g.initial_seed(), "state": base64.b64encode(g.get_state().numpy().tobytes()).decode()}


def sampler_state(sampler: Any) -> dict[str, Any] | None:
    """Class, simple settings and generator state of a sampler or batch_sampler."""
    if sampler is None:
        return None
    out: dict[str, Any] = {"class": _name(sampler)}
    for a in _SAMPLER_ATTRS:
        v = getattr(sampler, a, None)
        if isinstance(v, (bool, int, float, str)):
            out[a] = v
    out["generator"] = generator_state(getattr(sampler, "generator", None))
    inner = getattr(sampler, "sampler", None)
    if inner is not None and inner is not sampler:
        out["sampler"] = sampler_state(inner)
    return out


def loader_config(loader: Any) -> dict[str, Any]:
    """The DataLoader settings that decide what a training loop sees."""
    ctx = loader.multiprocessing_context
    return {
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "persistent_workers": loader.persistent_workers,
        "prefetch_factor": loader.prefetch_factor,
        "in_order": getattr(loader, "in_order", True),
        "timeout": loader.timeout,
        "multiprocessing_context": ctx.get_start_method() if ctx is not None else None,
        "dataset": _name(loader.dataset),
        "sampler": _name(loader.sampler),
        "batch_sampler": _name(loader.batch_sampler),
        "collate_fn": _name(loader.collate_fn),
    }


def epoch_provenance(loader: Any) -> dict[str, Any]:
    """Provenance captured at the start of an epoch, before the sampler draws."""
    out = {
        "loader": loader_config(loader),
        "sampler": sampler_state(loader.sampler),
        "batch_sampler": sampler_state(loader.batch_sampler),
        "loader_generator": generator_state(loader.generator),
        "torch_initial_seed": torch.initial_seed(),
        "torch_rng_state": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": versions(),
    }
    if dist.is_available() and dist.is_initialized():
        out["rank"], out["world_size"] = dist.get_rank(), dist.get_world_size()
    elif isinstance(getattr(loader.sampler, "num_replicas", None), int):  # a DistributedSampler without a process group
        out["rank"], out["world_size"] = loader.sampler.rank, loader.sampler.num_replicas
    return out
