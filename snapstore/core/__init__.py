"""Core: what every layer shares, with no I/O: the on-disk names and format version
(``layout``), manifests (``manifest``), batch structures (``schema``), row blocks
(``rows``), content hashes (``hashing``) and the walk of a loader's datasets
(``datasets``). Imports nothing of snapstore but ``errors`` and ``config``.
"""

from __future__ import annotations

from .layout import FORMAT_VERSION
from .manifest import EpochManifest, FieldInfo, SnapshotManifest, StreamManifest

__all__ = ["FORMAT_VERSION", "EpochManifest", "FieldInfo", "SnapshotManifest", "StreamManifest"]
