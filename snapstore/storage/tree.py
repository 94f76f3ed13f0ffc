"""The tree of a snapshot: streams, ranks, epochs and continuations, as groups; the one walk of it.

``<snapshot>/<stream>/[rank<r>/]epochs/<e>/[continued/<k>/]`` (see
``core.layout``). Readers walk it strictly: a group is trusted only once its
manifest attribute is there, a group without one is skipped while empty
(being created) and is damage otherwise. The audit and the recorder walk it
leniently (``strict=False``): what cannot be read is left for them to
report or to refuse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from ..core import layout
from ..core.manifest import (
    EpochManifest,
    RanksManifest,
    RawManifest,
    SnapshotManifest,
    StreamManifest,
    merge_ranks,
)
from ..core.merkle import RAW_ROWS, Coverage, parse_chunks, parse_seals, record_hash
from ..errors import CorruptionError
from .groups import Array, Group, array_nbytes_stored, child, children, members, reread
from .readers import ChunkReader


def array_at(nodes: dict[str, Any], name: str, what: str) -> Any:
    """The array ``name`` among ``nodes`` (``members``); ``CorruptionError`` if it is missing."""
    node = nodes.get(name)
    if not isinstance(node, Array):
        raise CorruptionError.damaged(f"{what}/{name}: array {name!r} is missing")
    return node


def subtree(nodes: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The nodes under ``prefix/``, by path relative to it."""
    return {k[len(prefix) + 1 :]: v for k, v in nodes.items() if k.startswith(prefix + "/")}


def group_at(nodes: dict[str, Any], name: str, what: str) -> Any:
    """The group ``name`` among ``nodes``, or ``None`` if there is none."""
    node = nodes.get(name)
    if node is not None and not isinstance(node, Group):
        raise CorruptionError.damaged(f"{what}/{name}: an array where snapstore writes a group")
    return node


def manifested(group: Any, attrs: tuple[str, ...], where: str) -> dict[str, Any]:
    """The child groups of ``group`` that carry one of the attributes ``attrs`` (streams, epochs), by name.

    A child without one is skipped only while it is empty (a recorder stopped,
    or still running, between creating the group and writing its manifest);
    one holding data without its manifest, read again (a recorder writes the
    manifest before the data), is damage.
    """
    out = {}
    for name, node in members(group, where).items():
        if not isinstance(node, Group):  # a node's zarr.json replaced by an array's: the node would vanish
            raise CorruptionError.damaged(f"{where}/{name}: an array where snapstore writes only groups (its "
                                          "zarr.json was replaced)")
        if not any(a in node.attrs for a in attrs):
            if not members(node, f"{where}/{name}"):
                continue
            node = reread(node)  # its manifest is written before its data: written since ``node`` was read?
            if not any(a in node.attrs for a in attrs):
                raise CorruptionError.damaged(f"{where}/{name} holds data but its {attrs[0]!r} manifest "
                                              "attribute is missing")
        out[name] = node
    return out


def numbered(group: Any, where: str, what: str) -> dict[int, Any]:
    """The manifested child groups of ``group`` named by a number (epochs, continuations), by number."""
    out = {}
    for name, node in manifested(group, (layout.EPOCH_ATTR,), where).items():
        if not name.isdigit() or str(int(name)) != name:
            raise CorruptionError.damaged(f"{where}/{name}: the group of {what} must be named by its number")
        out[int(name)] = node
    return out


def reread_parent(node: Group) -> Group:
    """The group holding ``node``, read from the store now."""
    return reread(zarr.open_group(node.store, path=node.path.rpartition("/")[0], mode="r", zarr_format=3,
                                  use_consolidated=False))


def check_pieces(epochs: Group, found: dict[str, Group], where: str, *, prefix: str = "") -> None:
    """Check the epoch pieces ``found`` (by path inside the stream's ``epochs/`` group ``epochs``, all those
    whose path starts with ``prefix``: the epochs, or one epoch's continuations) against the list of pieces
    ``epochs`` names (``layout.PIECES_ATTR``, format version 2; read before the pieces' records).

    Every piece found must be named; a piece named as finished must be there with the very record whose
    hash the list names (pieces recorded before the list, format version 1, are named as not finished). So
    an epoch that vanishes (its
    ``zarr.json`` replaced by an array's or deleted), an epoch copied in from elsewhere, a record replaced by
    another or by an older version of itself, are ``CorruptionError``. Pieces of a snapshot without a list
    (format version 1) are not checked. A piece the list read first does not name (a writer starting it
    while this reads) is looked up in the list read again; it is not checked against a seal read after it.
    """
    listed = epochs.attrs.get(layout.PIECES_ATTR)
    if listed is None and not any(isinstance(r := g.attrs.get(layout.EPOCH_ATTR), dict) and layout.CHUNKS in r
                                  for g in found.values()):
        return  # format version 1
    # none read although the records need one: written since (a writer starting its first epoch), or missing
    pieces = parse_seals(listed, where) if listed is not None else {}
    named_since: dict[str, int | None] | None = None
    for key, group in found.items():
        if key not in pieces:  # named since the list was read (a writer starting it), or not at all
            if named_since is None:
                now = reread(epochs).attrs.get(layout.PIECES_ATTR)
                if now is None:
                    raise CorruptionError.damaged(f"{where}: its list of epochs (attribute {layout.PIECES_ATTR!r} "
                                                  "of epochs/) is missing although its epochs were recorded with one")
                named_since = parse_seals(now, where)
            if key not in named_since:
                raise CorruptionError.damaged(
                    f"{where}/{key}: an epoch its stream's list of epochs does not name (copied in from elsewhere, or "
                    "the list was replaced by an older one)")
            continue
        sealed = pieces[key]
        if sealed is not None and record_hash(group.attrs.get(layout.EPOCH_ATTR)) != sealed:
            raise CorruptionError.damaged(
                f"{where}/{key}: its commit record is not the one its stream's list of epochs names as final (the "
                "record was edited, replaced by another epoch's, or by an older version of itself)")
    for key, sealed in pieces.items():
        rest = key[len(prefix) :] if key.startswith(prefix) else None
        if rest is not None and "/" not in rest and sealed is not None and key not in found:
            raise CorruptionError.damaged(f"{where}/{key}: a finished epoch its stream's list of epochs names is "
                                          "missing (its group was deleted, or its zarr.json replaced)")


def _committed_rows(record: Any) -> Any:
    """The rows raw commit record ``record`` commits, as stored (checked by ``RawManifest``)."""
    return record.get("rows", 0) if isinstance(record, dict) else 0


def raw_coverage(rank_group: Group, raw: Group, where: str) -> Coverage:
    """What the commit record of raw group ``raw`` (of one rank's stream ``rank_group``) names of its chunks;
    ``CorruptionError`` when it names none in a stream recorded with format version 2 (one whose
    ``epochs/`` lists its pieces)."""
    record = raw.attrs.get(layout.RAW_ATTR, {})
    entries = parse_chunks(record, where)
    epochs = child(rank_group, layout.EPOCHS_GROUP)
    listed = epochs.attrs.get(layout.PIECES_ATTR) if epochs is not None else None
    if listed is not None:
        parse_seals(listed, where)
        rows = _committed_rows(record)
        sealed = listed.get(RAW_ROWS, 0)  # type: ignore[union-attr]
        if isinstance(rows, int) and rows < sealed:
            now = _committed_rows(reread(raw).attrs.get(layout.RAW_ATTR))  # committed since (a live writer)?
            if not isinstance(now, int) or now < sealed:
                raise CorruptionError.damaged(
                    f"{where}: its commit record commits {rows} raw rows, fewer than the {sealed} committed when "
                    "its stream's last epoch finished (the record was deleted or replaced by an older one)")
        if entries is None and rows:
            raise CorruptionError.damaged(f"{where}: its commit record names no chunk hashes")
    return Coverage(entries, raw.path, where)


def stream_ranks(group: Group, where: str, *, strict: bool = True) -> list[tuple[int, Group, str]]:
    """``(rank, group, where)`` of each rank's stream in stream group ``group``: the group itself, or
    ``rank<r>/`` for each rank of a stream recorded under torch.distributed.

    ``strict``: a missing rank or a damaged ``ranks`` attribute raises
    ``CorruptionError``; otherwise what is there is returned (the audit reports the rest).
    """
    if layout.RANKS_ATTR not in group.attrs or layout.STREAM_ATTR in group.attrs:
        return [(0, group, where)]
    try:
        world_size = RanksManifest.from_dict(group.attrs[layout.RANKS_ATTR], where=where).world_size
    except CorruptionError:
        if strict:
            raise
        return []
    nodes = members(group, where) if strict else dict(children(group)[0])
    out = []
    for r in range(world_size):
        name = layout.rank_name(r)
        node = group_at(nodes, name, where) if strict else nodes.get(name)
        if isinstance(node, Group):
            out.append((r, node, f"{where}/{name}"))
        elif strict:
            raise CorruptionError.damaged(f"{where}/{name}: the stream of rank {r} is missing")
    return out


def epoch_groups(rank_group: Group, where: str, *, strict: bool = True) -> dict[int, tuple[Group, str]]:
    """One rank's epoch groups by number, as ``(group, where)``.

    ``strict``: only epochs whose commit record is there (an empty group being
    created is skipped, one holding data without its record is damage);
    otherwise every group named by a number, readable or not.
    """
    base = f"{where}/{layout.EPOCHS_GROUP}"
    if strict:
        epochs = group_at(members(rank_group, where), layout.EPOCHS_GROUP, where)
        found = numbered(epochs, base, "an epoch") if epochs is not None else {}  # records read after the list
        if epochs is not None:
            check_pieces(epochs, {str(e): g for e, g in found.items()}, base)
    else:
        epochs = child(rank_group, layout.EPOCHS_GROUP)
        found = ({int(n): g for n, g in children(epochs)[0] if n.isdigit() and isinstance(g, Group)}
                 if epochs is not None else {})
    return {e: (g, f"{base}/{layout.epoch_name(e)}") for e, g in found.items()}


def epoch_pieces(epoch_group: Group, where: str, *, strict: bool = True) -> list[tuple[int, Group, str]]:
    """``(k, group, where)`` of each piece of an epoch in recording order: the epoch's own group
    (k = 0), then each ``continued/<k>`` recorded after a resume (k = 1, 2, ...)."""
    base = f"{where}/{layout.CONTINUED_GROUP}"
    if strict:
        epochs = reread_parent(epoch_group)  # its list of pieces, read before the continuations' records
        continued = group_at(members(epoch_group, where), layout.CONTINUED_GROUP, where)
        extra = sorted(numbered(continued, base, "a continuation").items()) if continued is not None else []
        if extra and extra[0][0] == 0:
            raise CorruptionError.damaged(f"{base}/0: continuations are numbered from 1")
        prefix = f"{epoch_group.basename}/{layout.CONTINUED_GROUP}/"
        check_pieces(epochs, {f"{prefix}{k}": g for k, g in extra}, where.rpartition("/")[0], prefix=prefix)
    else:
        continued = child(epoch_group, layout.CONTINUED_GROUP)
        extra = sorted((int(k), g) for k, g in (children(continued)[0] if continued is not None else [])
                       if k.isdigit() and isinstance(g, Group))
    return [(0, epoch_group, where), *((k, g, f"{base}/{k}") for k, g in extra)]


def summary(root: Group, where: str) -> dict[str, Any]:
    """What ``snapstore info`` prints, from the manifests alone: format version, versions, bytes stored,
    and per stream its schema, raw sample count and epochs (rows, batches, complete).

    The walk is strict (damage raises ``CorruptionError``); no row is decoded but the raw index of a
    stream recorded by several ranks, to count the samples they share once. Used by ``Snapshot.info``,
    and by the command line without importing torch.
    """
    manifest = SnapshotManifest.from_dict(root.attrs.get(layout.SNAPSHOT_ATTR), where=where)
    streams = manifested(root, (layout.STREAM_ATTR, layout.RANKS_ATTR), where)
    return {
        "path": where,
        "format_version": manifest.format_version,
        "created": manifest.created,
        "versions": manifest.versions,
        "bytes_stored": array_nbytes_stored(root, where),
        "streams": {name: stream_summary(streams[name], f"{where}/{name}", name) for name in sorted(streams)},
    }


def stream_summary(group: Group, where: str, name: str) -> dict[str, Any]:
    """The entry of ``summary`` for stream ``name``, whose group is ``group`` at ``where``."""
    ranks = stream_ranks(group, where)
    m = merge_ranks([StreamManifest.from_dict(g.attrs.get(layout.STREAM_ATTR), where=w, name=name)
                     for _, g, w in ranks])
    raw_rows, indices = 0, []
    for _, g, w in ranks:
        raw = child(g, layout.RAW_GROUP)
        if raw is None:
            continue
        raw_where = f"{w}/{layout.RAW_GROUP}"
        coverage = raw_coverage(g, raw, raw_where)
        rows = RawManifest.from_dict(raw.attrs.get(layout.RAW_ATTR, {}), where=raw_where, stream=m).rows
        raw_rows += rows
        if rows and len(ranks) > 1:  # a sample that several ranks fetched counts once
            index = array_at(members(raw, raw_where), layout.RAW_INDEX, raw_where)
            expect = coverage.of(index.path)
            indices.append(ChunkReader(index, raw_where, rows=rows, expect=expect).read(0, rows))
    per_rank = [epoch_groups(g, w) for _, g, w in ranks]
    epochs = []
    for number in sorted({e for found in per_rank for e in found}):
        pieces = [[EpochManifest.from_dict(p.attrs.get(layout.EPOCH_ATTR), where=pw, number=number, part=k, stream=m)
                   for k, p, pw in epoch_pieces(*found[number])] for found in per_rank if number in found]
        epochs.append({"epoch": number, "rows": sum(p.rows for mine in pieces for p in mine),
                       "batches": sum(p.batches for mine in pieces for p in mine),
                       "complete": all(mine[-1].complete for mine in pieces)})
    return {
        "iterable": m.iterable,
        "dataset_len": m.dataset_len,
        "world_size": len(ranks),
        "fields": {p: f.to_dict() for p, f in m.fields.items()},
        "outputs": {p: f.to_dict() for p, f in m.outputs.items()},
        "raw_samples": len(np.unique(np.concatenate(indices))) if indices else raw_rows,
        "epochs": epochs,
    }
