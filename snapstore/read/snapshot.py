"""Open a snapshot read-only: ``open(path) -> Snapshot``; ``snapshot[name] -> Stream``.

Readers trust only what the manifests say was committed, and never write to
the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property, partial
from typing import Any

from .. import storage
from ..core import layout
from ..core.manifest import SnapshotManifest
from ..errors import StreamNotFoundError
from ..storage.tree import manifested, summary
from .stream import Stream


def open(path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> Snapshot:  # noqa: A001
    """Open the snapshot at ``path`` read-only.

    Parameters
    ----------
    path : str or os.PathLike
        A snapshot directory or fsspec URL written by ``snapstore.Recorder``.
    storage_options : dict, optional
        fsspec options for URLs.

    Raises
    ------
    SnapshotNotFoundError
        Nothing is at ``path``.
    NotASnapshotError
        ``path`` holds something that is not a snapshot.
    FormatVersionError
        The snapshot was written by a newer snapstore.
    """
    path = str(path)
    root = storage.open_group(path, mode="r", storage_options=storage_options)
    manifest = SnapshotManifest.from_dict(root.attrs.get(layout.SNAPSHOT_ATTR), where=path)
    return Snapshot(path, root, manifest, storage_options=storage_options)


class Snapshot:
    """A read-only snapshot: a mapping of stream names to ``Stream``."""

    def __init__(self, path: str, root: Any, manifest: SnapshotManifest, *,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.storage_options = storage_options
        self._root = root

    @property
    def group(self) -> storage.Group:
        """The snapshot's root ``zarr.Group``, opened read-only (for reading it with plain zarr)."""
        return self._root

    @cached_property
    def _streams(self) -> dict[str, Any]:
        return manifested(self._root, (layout.STREAM_ATTR, layout.RANKS_ATTR), self.path)

    @cached_property
    def streams(self) -> list[str]:
        """Names of the recorded streams, sorted."""
        return sorted(self._streams)

    def __getitem__(self, name: str) -> Stream:
        if name not in self.streams:
            raise StreamNotFoundError(f"no stream {name!r} in {self.path}; streams: {self.streams}")
        reopen = partial(_reopen_stream, self.path, name, self.storage_options)
        return Stream(self._streams[name], f"{self.path}/{name}", reopen=reopen)

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def __iter__(self) -> Iterator[str]:
        return iter(self.streams)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary from the manifests: format version, versions, bytes stored, and per stream
        its fields, outputs, raw sample count and epochs (rows, batches, complete)."""
        return summary(self._root, self.path)

    def __repr__(self) -> str:
        return f"<Snapshot {self.path} streams={self.streams}>"


def _reopen_stream(path: str, name: str, storage_options: dict[str, Any] | None) -> Stream:
    """Stream ``name`` of the snapshot at ``path``, opened anew (a lazy dataset in a DataLoader worker)."""
    return open(path, storage_options=storage_options)[name]
