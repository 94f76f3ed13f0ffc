"""Reading stored bytes as untrusted input: regular files inside the snapshot, sizes and JSON depth bounded.

A snapshot from anyone may hold a named pipe where a file should be (an
``open`` that blocks forever), a symlink to ``/dev/zero`` (a read that never
ends), a symlink to a file outside the snapshot, or a ``zarr.json`` of a
gigabyte or nested a million deep. ``read_local`` is the one place snapstore
reads a local file of a snapshot (``zarr.json`` through
``groups.SnapshotStore``, chunks through ``chunks.read_chunk``), and
``check_metadata`` the one check of a ``zarr.json``'s size and depth before
anything parses it; each refusal is a ``CorruptionError`` naming the file
and the problem.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .. import config
from ..errors import CorruptionError

_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def read_local(root: Path, path: Path, limit: int) -> bytes | None:
    """The bytes of the regular file at ``path`` in the snapshot in folder ``root``; ``None`` when nothing
    (or a folder) is there.

    The file is opened without following a last symlink and without
    blocking (``O_NOFOLLOW | O_NONBLOCK``), after resolving the symlinks
    before it, and read only if it is a regular file of at most ``limit``
    bytes. Symlinks that stay inside the snapshot are followed.

    Raises
    ------
    CorruptionError
        ``path`` leads outside ``root`` through a symlink, is a named pipe,
        a device or a socket, or holds more than ``limit`` bytes.
    """
    base, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([base, real]) != base:
        raise CorruptionError.damaged(f"{path} leads through a symlink to {real}, outside the snapshot ({base}); "
                                      "a snapshot is read only from its own folder")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
            raise CorruptionError.damaged(f"{path} is not a regular file but {kind}; a snapshot holds regular "
                                          "files only")
        if st.st_size > limit:
            raise CorruptionError.damaged(f"{path} holds {st.st_size} bytes, more than the {limit} bytes it can "
                                          "hold")
        data = f.read(st.st_size + 1)  # one byte more: a file that grew since fstat
    if len(data) > limit:
        raise CorruptionError.damaged(f"{path} holds more than the {limit} bytes it can hold")
    return data


def check_metadata(data: bytes, where: str) -> None:
    """Refuse a ``zarr.json`` (``data``, found at ``where``) larger than ``config.MAX_METADATA_BYTES`` or whose
    JSON nests deeper than ``config.MAX_METADATA_DEPTH``, before zarr parses it; text that is not JSON is
    left to zarr's parser (it raises, and readers report the damage)."""
    if len(data) > config.MAX_METADATA_BYTES:
        raise CorruptionError.damaged(f"{where} holds {len(data)} bytes, more than the "
                                      f"{config.MAX_METADATA_BYTES} bytes a zarr.json may hold")
    try:
        doc = json.loads(data)
    except RecursionError:
        doc = None
        depth = config.MAX_METADATA_DEPTH + 1
    except ValueError:
        return
    else:
        depth = _depth(doc)
    if depth > config.MAX_METADATA_DEPTH:
        raise CorruptionError.damaged(f"{where} nests JSON more than {config.MAX_METADATA_DEPTH} levels deep")


def _depth(doc: object) -> int:
    """How deep lists and objects nest in the parsed JSON ``doc`` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, level = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= config.MAX_METADATA_DEPTH:
            todo.extend((c, level + 1) for c in children)
    return deepest
