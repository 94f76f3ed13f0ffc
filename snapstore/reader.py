"""Open a snapshot read-only and recover what was recorded.

``open(path) -> Snapshot``; ``snapshot[name] -> Stream``; ``stream.epoch(e)
-> Epoch``. Readers trust only what the manifests say was committed, and
never write to the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

import numpy as np
from torch.utils.data import Dataset, TensorDataset

from . import _checks, export, hashing, layout, store
from .errors import CorruptionError, UsageError
from .layout import EpochManifest, FieldInfo, SnapshotManifest, StreamManifest
from .schema import Structure, numpy_dtype, rebuild_leaf, unflatten

__all__ = ["Epoch", "RawSamples", "Snapshot", "Stream", "open"]


def open(path: Any, *, storage_options: dict[str, Any] | None = None) -> Snapshot:  # noqa: A001
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
    root = store.open_group(path, mode="r", storage_options=storage_options)
    manifest = _checks.snapshot_manifest(root.attrs.get(layout.SNAPSHOT_ATTR), path=path)
    return Snapshot(path, root, manifest, storage_options=storage_options)


def _node(nodes: dict[str, Any], name: str, what: str) -> Any:
    """The array ``name`` among ``nodes`` (``store.members``); ``CorruptionError`` if it is missing."""
    node = nodes.get(name)
    if not isinstance(node, store.Array):
        raise CorruptionError(f"{what}/{name}: array {name!r} is missing; the snapshot is damaged: restore it from a copy")
    return node


def _subtree(nodes: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The nodes under ``prefix/``, by path relative to it."""
    return {k[len(prefix) + 1 :]: v for k, v in nodes.items() if k.startswith(prefix + "/")}


def _group(nodes: dict[str, Any], name: str, what: str) -> Any:
    """The group ``name`` among ``nodes``, or ``None`` if there is none."""
    node = nodes.get(name)
    if node is not None and not isinstance(node, store.Group):
        raise CorruptionError(f"{what}/{name}: an array where snapstore writes a group; the snapshot is damaged")
    return node


def _manifested(group: Any, attrs: tuple[str, ...], where: str) -> dict[str, Any]:
    """The child groups of ``group`` that carry one of the attributes ``attrs`` (streams, epochs), by name.

    A child without one is skipped only while it is empty (a recorder stopped,
    or still running, between creating the group and writing its manifest);
    one holding data without its manifest is damage.
    """
    out = {}
    for name, node in store.members(group, where).items():
        if not isinstance(node, store.Group):
            continue
        if any(a in node.attrs for a in attrs):
            out[name] = node
        elif store.members(node, f"{where}/{name}"):
            raise CorruptionError(
                f"{where}/{name} holds data but its {attrs[0]!r} manifest attribute is missing; the snapshot is damaged: "
                "restore it from a copy"
            )
    return out


def _numbered(group: Any, where: str, what: str) -> dict[int, Any]:
    """The manifested child groups of ``group`` named by a number (epochs, continuations), by number."""
    out = {}
    for name, node in _manifested(group, (layout.EPOCH_ATTR,), where).items():
        if not name.isdigit() or str(int(name)) != name:
            raise CorruptionError(f"{where}/{name}: the group of {what} must be named by its number; the snapshot is damaged")
        out[int(name)] = node
    return out


class Snapshot:
    """A read-only snapshot: a mapping of stream names to ``Stream``."""

    def __init__(self, path: str, root: Any, manifest: SnapshotManifest, *, storage_options: dict[str, Any] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.storage_options = storage_options
        self._root = root

    @cached_property
    def _streams(self) -> dict[str, Any]:
        return _manifested(self._root, (layout.STREAM_ATTR, layout.RANKS_ATTR), self.path)

    @cached_property
    def streams(self) -> list[str]:
        """Names of the recorded streams, sorted."""
        return sorted(self._streams)

    def __getitem__(self, name: str) -> Stream:
        if name not in self.streams:
            raise KeyError(f"no stream {name!r} in {self.path}; streams: {self.streams}")
        return Stream(self._streams[name], f"{self.path}/{name}", snapshot=(self.path, self.storage_options))

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def __iter__(self) -> Iterator[str]:
        return iter(self.streams)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: format version, versions, and per stream its fields and epochs."""
        return {
            "path": self.path,
            "format_version": self.manifest.format_version,
            "created": self.manifest.created,
            "versions": self.manifest.versions,
            "bytes_stored": store.array_nbytes_stored(self._root, self.path),
            "streams": {name: self[name].info() for name in self.streams},
        }

    def __repr__(self) -> str:
        return f"<Snapshot {self.path} streams={self.streams}>"


class Stream:
    """One recorded loader: its schema, raw samples and epochs.

    A stream recorded by several ranks (``torch.distributed``) reads as one:
    its epochs interleave the ranks' batches (``Epoch.ranks`` tells which rank
    saw each position) and ``stream.rank(r)`` is one rank's own view.
    """

    def __init__(self, group: Any, path: str, *, snapshot: tuple[str, dict[str, Any] | None] | None = None,
                 name: str | None = None) -> None:
        self._group = group
        self.path = path
        self._snapshot = snapshot  # (snapshot path, storage_options): how a worker reopens it
        self._rank: int | None = None  # set on a one-rank view from rank()
        self._name = group.basename if name is None else name  # a rank's view is named after its stream
        self._read_manifests()

    def _read_manifests(self) -> None:
        group, path = self._group, self.path
        if layout.RANKS_ATTR in group.attrs and layout.STREAM_ATTR not in group.attrs:
            world_size = _checks.ranks_manifest(group.attrs[layout.RANKS_ATTR], where=path)
            nodes = store.members(group, path)
            names = [layout.rank_name(r) for r in range(world_size)]
            self._ranks = []
            for n in names:
                rank_group = _group(nodes, n, path)
                if rank_group is None:
                    raise CorruptionError(f"{path}/{n}: the stream of rank {n} is missing; the snapshot is damaged: restore it from a copy")
                self._ranks.append(rank_group)
            self._paths = [f"{path}/{n}" for n in names]
        else:
            self._ranks = [group]
            self._paths = [path]
        manifests = [_checks.stream_manifest(g.attrs.get(layout.STREAM_ATTR), name=self._name, where=p)
                     for g, p in zip(self._ranks, self._paths)]
        self.manifest = _merged(manifests)
        self.name = self.manifest.name

    @property
    def world_size(self) -> int:
        """Number of ranks that recorded this stream (1 without torch.distributed)."""
        return len(self._ranks)

    def rank(self, r: int) -> Stream:
        """The stream as rank ``r`` recorded it."""
        if not 0 <= r < self.world_size:
            raise KeyError(f"stream {self.name!r} was recorded by {self.world_size} rank(s); there is no rank {r}")
        if self.world_size == 1:
            return self
        view = Stream(self._ranks[r], self._paths[r], snapshot=self._snapshot, name=self.name)
        view._rank = r
        return view

    @property
    def fields(self) -> dict[str, FieldInfo]:
        """Seen fields by path, e.g. ``{"0": FieldInfo(...), "1": ...}``."""
        return dict(self.manifest.fields)

    @property
    def output_fields(self) -> dict[str, FieldInfo]:
        """Logged outputs by name."""
        return dict(self.manifest.outputs)

    def _epoch_groups(self, r: int) -> dict[int, Any]:
        """Rank ``r``'s epoch groups by number, listed now."""
        group = _group(store.members(self._ranks[r], self._paths[r]), layout.EPOCHS_GROUP, self._paths[r])
        if group is None:
            return {}
        return _numbered(group, f"{self._paths[r]}/{layout.EPOCHS_GROUP}", "an epoch")

    @cached_property
    def epochs(self) -> list[int]:
        """Recorded epoch numbers, ascending (complete or not)."""
        return sorted({e for r in range(len(self._ranks)) for e in self._epoch_groups(r)})

    def epoch(self, number: int) -> Epoch:
        """Epoch ``number`` (negative numbers count from the last), stitched across resumes and ranks."""
        epochs = self.epochs
        if number < 0 and -number <= len(epochs):
            number = epochs[number]
        if number not in epochs:
            raise KeyError(f"stream {self.name!r} has no epoch {number}; recorded epochs: {epochs}")
        groups = self._epoch_groups_of(number)  # opening them reads their commit records
        # The schema is read after the commit records, so it covers every committed row even while
        # a writer is adding to both (a live recording).
        self._group = store.reread(self._group)
        self._read_manifests()
        return Epoch(self, [[_Part(self, g, r, what, number, k) for g, what, k in parts] for r, parts in groups])

    def _epoch_groups_of(self, number: int) -> list[tuple[int, list[tuple[Any, str, int]]]]:
        """(rank, [(group, where, part) of the epoch's group and its continuations...]) for each rank
        that recorded ``number``."""
        out = []
        for r in range(len(self._ranks)):
            group = self._epoch_groups(r).get(number)
            if group is None:
                continue
            what = f"{self._paths[r]}/{layout.EPOCHS_GROUP}/{layout.epoch_name(number)}"
            continued = _group(store.members(group, what), layout.CONTINUED_GROUP, what)
            where = f"{what}/{layout.CONTINUED_GROUP}"
            extra = sorted(_numbered(continued, where, "a continuation").items()) if continued is not None else []
            if extra and extra[0][0] == 0:
                raise CorruptionError(f"{where}/0: continuations are numbered from 1; the snapshot is damaged")
            out.append((r, [(group, what, 0), *((g, f"{where}/{k}", k) for k, g in extra)]))
        return out

    def __iter__(self) -> Iterator[Epoch]:
        return (self.epoch(e) for e in self.epochs)

    @cached_property
    def raw(self) -> RawSamples:
        """Raw samples by dataset index, as a map-style ``Dataset``."""
        return RawSamples(self)

    def to_tensor_dataset(self, epoch: int | None = None) -> TensorDataset:
        """Recorded data as a ``TensorDataset``, one tensor per field in structure order.

        Built on ``to_numpy``: each field is filled chunk by chunk into one
        array that the tensor then shares (no second copy). bfloat16 fields
        come back as bfloat16 tensors.

        Parameters
        ----------
        epoch : int, optional
            ``None`` (default): raw samples in dataset-index order; every index
            ``0 .. len(dataset)-1`` must have been recorded, so that
            ``ds[i]`` is the raw sample of dataset index ``i``. ``e``: the seen
            rows of epoch ``e`` in the order the model saw them.

        Returns
        -------
        torch.utils.data.TensorDataset
            Tensors of shape ``(rows, *row_shape)`` with the recorded dtypes.

        Raises
        ------
        SnapstoreError
            Raw samples are missing for some indices.
        SchemaError
            A field holds strings, or is ragged (use ``to_numpy(ragged="pad")``).
        KeyError
            No epoch ``epoch``.

        Examples
        --------
        >>> ds = snapstore.open("runs/exp1.snap")["train"].to_tensor_dataset()  # doctest: +SKIP
        >>> x0, y0 = ds[0]  # the raw sample of dataset index 0  # doctest: +SKIP
        """
        return export.to_tensor_dataset(self, epoch)

    def as_dataset(self, epoch: int | None = None) -> Dataset:
        """A map-style ``Dataset`` that reads items lazily from the snapshot.

        For retraining or re-evaluating on exactly what was seen without
        loading it all: ``DataLoader(stream.as_dataset(0), ...)``. It holds
        only the snapshot path, storage options, stream name and epoch, and
        reopens the snapshot in each DataLoader worker, so it works with
        ``num_workers > 0`` (``fork`` or ``spawn``). Each item decodes the
        chunk that holds it (recently decoded chunks are cached per worker),
        so sequential access is fast and random access costs one chunk read.

        Parameters
        ----------
        epoch : int, optional
            ``None`` (default): ``ds[i]`` is the raw sample of dataset index
            ``i`` (``KeyError`` for an index never fetched), ``len(ds)`` the
            dataset length. ``e``: ``ds[k]`` is the seen sample at position
            ``k`` of epoch ``e`` (one row of its batch), ``len(ds)`` the
            epoch's rows.

        Returns
        -------
        torch.utils.data.Dataset
            Items with the structure and types the dataset (raw) or the
            batch rows (seen) had.

        Raises
        ------
        KeyError
            No epoch ``epoch``.

        Examples
        --------
        >>> ds = snapstore.open("runs/exp1.snap")["train"].as_dataset(epoch=0)  # doctest: +SKIP
        >>> loader = DataLoader(ds, batch_size=64, num_workers=2)  # doctest: +SKIP
        """
        if self._snapshot is None:
            raise UsageError(f"stream {self.name!r} was not opened through snapstore.open(); open it with snapstore.open(path)[name]")
        path, storage_options = self._snapshot
        length = len(self.raw) if epoch is None else len(self.epoch(epoch))
        number = None if epoch is None else self.epoch(epoch).number
        return export.StoreDataset(path, self.name, number, storage_options=storage_options, rank=self._rank, length=length)

    def to_tf_dataset(self, epoch: int | None = None, *, channels_last: bool = False, fields: Any = None) -> Any:
        """Recorded rows as a ``tf.data.Dataset``, streamed from the snapshot.

        One element per row, like ``tf.data.Dataset.from_tensor_slices((x, y))``:
        a tuple for tuple/list batches, a dict for dict batches (nested
        structures nest), a namedtuple for namedtuples, a single tensor for a
        single-tensor batch. ``element_spec`` comes from the stored schema
        (dtypes and row shapes). Rows are read in chunk-aligned blocks through
        ``from_generator`` with an ``output_signature``, so the epoch is never
        loaded whole; strings become ``tf.string``, bfloat16 ``tf.bfloat16``.
        Ragged fields have ``None`` for the dimensions that vary (rows are
        then handed to TensorFlow one by one, which is slower than blocks).

        Parameters
        ----------
        epoch : int, optional
            ``None`` (default): raw samples in dataset-index order. Raw
            samples captured out of index order (a shuffled loader) are
            gathered ``config.DEFAULT_GATHER_BYTES`` (64 MiB) of rows at a
            time, each window decoding the chunks it needs: about
            ``raw bytes / 64 MiB`` passes over the raw data. ``e``: the seen
            rows of epoch ``e`` in seen order (one pass).
        channels_last : bool, default False
            Move axis 0 of image-like fields to the end: fields recorded from
            torch tensors whose rows are 3-D, ``(C, H, W) -> (H, W, C)``.
            NumPy and PIL fields (already ``(H, W, C)``) are left as they are.
        fields : list of str, optional
            Field paths to keep (``["0"]``, ``["image", "meta/id"]``); the
            element keeps their place in the structure. All by default.

        Returns
        -------
        tf.data.Dataset

        Raises
        ------
        SnapstoreError
            TensorFlow is not installed (``pip install 'snapstore[tf]'``).
        UsageError
            An unknown field path.
        KeyError
            No epoch ``epoch``.

        Examples
        --------
        >>> ds = snapstore.open("runs/exp1.snap")["train"].to_tf_dataset(epoch=1, channels_last=True)  # doctest: +SKIP
        >>> model.fit(ds.batch(64))  # doctest: +SKIP
        """
        return export.to_tf_dataset(self, epoch, channels_last=channels_last, fields=fields)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary of the stream."""
        return {
            "iterable": self.manifest.iterable,
            "dataset_len": self.manifest.dataset_len,
            "world_size": self.world_size,
            "fields": {p: f.to_dict() for p, f in self.manifest.fields.items()},
            "outputs": {p: f.to_dict() for p, f in self.manifest.outputs.items()},
            "raw_samples": len(self.raw.indices),
            "epochs": [
                {"epoch": ep.number, "rows": len(ep), "batches": len(ep.batch_sizes), "complete": ep.complete}
                for ep in self
            ],
        }

    def __repr__(self) -> str:
        return f"<Stream {self.name!r} epochs={self.epochs} fields={list(self.manifest.fields)}>"


def _merged(manifests: list[StreamManifest]) -> StreamManifest:
    """One schema for the ranks of a stream: a field ragged on any rank is ragged."""
    first = manifests[0]
    if len(manifests) == 1:
        return first
    fields, raw_fields, outputs = dict(first.fields), dict(first.raw_fields), dict(first.outputs)
    for m in manifests[1:]:
        for mine, theirs in ((fields, m.fields), (raw_fields, m.raw_fields), (outputs, m.outputs)):
            for p, f in theirs.items():
                if p not in mine or (f.ragged and not mine[p].ragged):
                    mine[p] = f
    structure = next((m.structure for m in manifests if m.structure is not None), None)
    raw_structure = next((m.raw_structure for m in manifests if m.raw_structure is not None), None)
    return StreamManifest(first.name, first.iterable, first.batched, first.dataset_len, structure, fields,
                          raw_structure, raw_fields, outputs, first.base_datasets)


def _join(parts: list[np.ndarray | list[np.ndarray]]) -> np.ndarray | list[np.ndarray]:
    """Row blocks read from several places, in order: one array, or one list for ragged rows."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], list):
        return [r for part in parts for r in part]
    return np.concatenate(parts)


class _Fields:
    """Readers for the fields of one group of rows, rebuilding rows into structures.

    Fields named in ``ragged`` are read from ``ragged/<path>/`` (lists of
    row arrays), the others from ``<name>/<path>`` (one block of rows).
    """

    def __init__(self, nodes: dict[str, Any], name: str, structure: Structure | None, infos: dict[str, FieldInfo],
                 ragged: list[str], rows: int, what: str) -> None:
        self.structure = structure or {"type": "none"}
        self.infos = infos
        self.readers: dict[str, store.ChunkReader | store.RaggedReader] = {}
        for p, info in infos.items():
            if p in ragged:
                self.readers[p] = store.RaggedReader(_subtree(nodes, f"{layout.RAGGED_GROUP}/{p}"), rows, info,
                                                     f"{what}/{layout.RAGGED_GROUP}/{p}")
            elif info.ragged and info.kind in ("tensor-list", "ndarray-list"):
                raise CorruptionError(f"{what}: field {p!r} holds a list of rows but is not stored ragged; the snapshot is damaged")
            else:
                self.readers[p] = store.ChunkReader(_node(nodes, f"{name}/{p}", what), what, rows=rows,
                                                    dtype=numpy_dtype(info.dtype), row_shape=_row_shape(info))

    def read(self, start: int, stop: int) -> dict[str, np.ndarray | list[np.ndarray]]:
        return {p: r.read(start, stop) for p, r in self.readers.items()}

    def build(self, rows: dict[str, Any], batched: bool) -> Any:
        return unflatten(self.structure, lambda p: rebuild_leaf(self.infos[p], rows[p], batched))


def _row_shape(info: FieldInfo) -> tuple[int, ...] | None:
    """The shape a fixed array's rows must have; ``None`` (unchecked) for a field whose rows vary,
    which is kept fixed (padded to one shape) until it turns ragged."""
    return None if None in info.shape else tuple(info.shape)  # type: ignore[arg-type]


def _check_indices(index: np.ndarray, m: StreamManifest, what: str) -> np.ndarray:
    """``index`` (dataset indices) if each lies within the dataset; ``CorruptionError`` otherwise."""
    n = m.dataset_len
    if len(index) and ((index < 0).any() or (n is not None and not m.iterable and (index >= n).any())):
        raise CorruptionError(f"{what}: {what.rsplit('/', 1)[-1]} holds dataset indices outside 0..{n}; the snapshot is damaged: "
                              "restore it from a copy")
    return index


class RawSamples(Dataset):
    """Raw samples by dataset index: ``raw[i]`` is ``dataset[i]`` as recorded (before transforms).

    ``len(raw)`` is the dataset's length (for iterable streams: the number
    recorded). ``raw.indices`` lists the recorded indices, sorted. Indexing an
    index that was never fetched raises ``KeyError``.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._sources: list[tuple[_Fields, np.ndarray]] = []  # one per rank that recorded raw samples
        self._groups: list[Any] = []  # the raw group of each source
        wheres = [f"{p}/{layout.RAW_GROUP}" for p in stream._paths]
        groups = [_group(store.members(g, p), layout.RAW_GROUP, p) for g, p in zip(stream._ranks, stream._paths)]
        attrs = [g.attrs.get(layout.RAW_ATTR, {}) if g is not None else {} for g in groups]
        # the schema, read after the raw commit records, covers every committed raw row
        m = _merged([_checks.stream_manifest(store.reread(g).attrs.get(layout.STREAM_ATTR), name=stream.name, where=p)
                     for g, p in zip(stream._ranks, stream._paths)])
        self.schema = m
        for group, a, where in zip(groups, attrs, wheres):
            rows, ragged = _checks.raw_manifest(a, stream=m, where=where)
            if rows:
                nodes = store.members(group, where, recursive=True)
                fields = _Fields(nodes, layout.RAW_FIELDS, m.raw_structure, m.raw_fields, ragged, rows, where)
                reader = store.ChunkReader(_node(nodes, layout.RAW_INDEX, where), where, rows=rows, dtype=np.dtype(np.int64), row_shape=())
                index = _check_indices(reader.read(0, rows), m, f"{where}/{layout.RAW_INDEX}")
                self._sources.append((fields, index))
                self._groups.append(group)
        self._rows = sum(len(index) for _, index in self._sources)

    @cached_property
    def _where(self) -> dict[int, tuple[int, int]]:
        """Dataset index -> (source, row) of its first recording."""
        where: dict[int, tuple[int, int]] = {}
        for s, (_, index) in enumerate(self._sources):
            for r, i in enumerate(index.tolist()):
                where.setdefault(i, (s, r))
        return where

    @cached_property
    def indices(self) -> np.ndarray:
        """Dataset indices with a recorded raw sample, ascending (int64)."""
        return np.array(sorted(self._where), dtype=np.int64)

    def __len__(self) -> int:
        n = self._stream.manifest.dataset_len
        return n if n is not None else len(self._where)

    def __getitem__(self, index: int) -> Any:
        where = self._where.get(int(index))
        if where is None:
            raise KeyError(f"no raw sample of dataset index {index} in stream {self._stream.name!r}: no epoch fetched it")
        fields, _ = self._sources[where[0]]
        return fields.build(fields.read(where[1], where[1] + 1), batched=False)

    def to_numpy(self, *, fields: Any = None, out: Mapping[str, np.ndarray] | None = None, ragged: str = "list") -> dict[str, Any]:
        """Raw samples in dataset-index order, one array per field.

        Raw rows are stored in the order they were first captured; each
        stored chunk is read once and its rows scattered to their place in
        index order, so memory stays at one block beyond the result.

        Parameters
        ----------
        fields : list of str, optional
            Raw field paths to export (``stream.manifest.raw_fields``); all by default.
        out : dict of str to ndarray, optional
            Preallocated destinations (arrays or ``numpy.memmap``) for some or
            all keys, e.g. to export more than fits in memory; the rest is
            allocated. Shapes and dtypes: ``snapstore.export.out_specs(raw)``.
        ragged : {"list", "pad"}, default "list"
            Ragged fields (rows of differing shapes): a list of row arrays, or
            zero-padded to the widest row plus ``"<field>.lengths"`` (int64,
            (n,) for one varying dimension, else (n, varying dimensions)).

        Returns
        -------
        dict of str to ndarray or list
            ``"index"``: int64, (n,), the recorded dataset indices ascending;
            each field: ``(n, *row_shape)`` in its stored dtype (``StringDType``
            for strings, ``uint16`` bit patterns for bfloat16), or a list of n
            arrays for a ragged field with ``ragged="list"``; the ``out``
            arrays themselves where given.

        Raises
        ------
        UsageError
            An unknown field, or an ``out`` array of the wrong shape or dtype.
        CorruptionError
            A chunk fails to decode or its checksum.
        """
        return export.to_numpy(self, fields=fields, out=out, ragged=ragged)

    def to_dask(self, fields: Any = None) -> dict[str, Any]:
        """Raw samples as ``dask.array``s, in stored (capture) order, chunk-aligned.

        Unlike ``to_numpy``, rows stay in the order they were captured: index
        order would make every dask chunk gather from every stored chunk.
        ``"index"`` holds the dataset index of each row; for index order,
        ``x[np.argsort(index.compute())]`` (a full shuffle in dask).

        Parameters
        ----------
        fields : list of str, optional
            Raw field paths; all by default.

        Returns
        -------
        dict of str to dask.array.Array
            ``"index"``: int64, (n,); each field ``(n, *row_shape)``; dask
            chunks are the stored chunks, limited to the committed rows.

        Raises
        ------
        SnapstoreError
            Dask is not installed (``pip install 'snapstore[dask]'``).
        SchemaError
            A selected field is ragged (a dask array needs one row shape).
        """
        return export.to_dask(self, fields)

    def _check_field(self, field: str) -> None:
        if field not in self.schema.raw_fields:
            raise KeyError(f"no raw field {field!r} in stream {self._stream.name!r}; raw fields: {list(self.schema.raw_fields)}")

    def _by_source(self, indices: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(source, which of indices, rows in that source)`` for recorded dataset ``indices``."""
        located = []
        for i in indices.tolist():
            where = self._where.get(i)
            if where is None:
                raise KeyError(f"no raw sample of dataset index {i} in stream {self._stream.name!r}: no epoch fetched it")
            located.append(where)
        src = np.array([s for s, _ in located], dtype=np.int64)
        rows = np.array([r for _, r in located], dtype=np.int64)
        return [(int(s), np.nonzero(src == s)[0], rows[src == s]) for s in np.unique(src)]

    def hashes(self, field: str) -> np.ndarray:
        """Content hash (xxh3_64, see ``snapstore.hashing``) of each raw sample's ``field``.

        Returns
        -------
        ndarray of uint64, shape (len(indices),)
            Aligned with ``indices`` (ascending dataset index).

        Raises
        ------
        KeyError
            No such raw field.
        CorruptionError
            A chunk of the hashes (or, for snapshots without stored hashes, of
            the data) fails to decode.
        """
        self._check_field(field)
        out = np.empty(len(self.indices), dtype=np.uint64)
        for s, which, rows in self._by_source(self.indices):
            fields, index = self._sources[s]
            stored = _stored_hashes(self._groups[s], layout.raw_hashes_path(field), len(index))
            out[which] = _fill_hashes(stored[rows], lambda k, f=fields, r=rows: f.readers[field].gather(r[k]))
        return out

    def gather(self, field: str, indices: Any) -> np.ndarray | list[np.ndarray]:
        """Rows of raw field ``field`` for dataset ``indices`` (any order): shape (n, *row_shape), or a
        list of arrays for a ragged field. ``KeyError`` for an unknown field or an index without a raw sample."""
        self._check_field(field)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        parts, where = [], []
        for s, which, rows in self._by_source(idx):
            parts.append(self._sources[s][0].readers[field].gather(rows))
            where.append(which)
        return _reorder(parts, where, self.schema.raw_fields[field])


class _Part:
    """One recorded piece of an epoch: a rank's epoch group, or a continuation after a resume."""

    def __init__(self, stream: Stream, group: Any, rank: int, what: str, number: int, part: int) -> None:
        self.group = group
        self.rank = rank
        m = stream.manifest  # read after this commit record (Stream.epoch): it covers its rows
        self.manifest = _checks.epoch_manifest(group.attrs.get(layout.EPOCH_ATTR), number=number, stream=m, where=what, part=part)
        self.rows = self.manifest.rows
        self.what = what
        # the nodes listed after the commit record was read: every array it covers is there
        self.nodes = store.members(group, what, recursive=True, exclude=(layout.CONTINUED_GROUP,)) if self.rows or self.manifest.batches else {}
        self.seen = _Fields(self.nodes, layout.SEEN_GROUP, m.structure, m.fields, self.manifest.ragged, self.rows, what) if self.rows else None

    def array(self, name: str, n: int, dtype: Any = np.int64, fill: Any = None) -> np.ndarray:
        """The first ``n`` entries of a per-position (or per-batch) array; ``fill`` when it does not exist."""
        if n == 0:
            return np.empty(0, dtype=dtype)
        if name not in self.nodes and fill is not None:
            return np.full(n, fill, dtype=dtype)
        array = _node(self.nodes, name, self.what)
        return store.ChunkReader(array, self.what, rows=n, dtype=np.dtype(dtype), row_shape=()).read(0, n)

    def batch_sizes(self) -> np.ndarray:
        """Rows of each committed batch; ``CorruptionError`` unless they add up to the committed rows."""
        sizes = self.array(layout.BATCH_SIZES, self.manifest.batches)
        if (sizes < 0).any() or int(sizes.sum()) != self.rows:
            raise CorruptionError(
                f"{self.what}: its {len(sizes)} batch sizes add up to {int(sizes.sum())} rows, but the commit record "
                f"says {self.rows}; the snapshot is damaged: restore it from a copy"
            )
        return sizes


def _interleave(per_rank: list[list[tuple[int, int, int]]]) -> list[tuple[int, int, int]]:
    """Batches of all ranks in step order: batch j of rank 0, of rank 1, ..., then batch j + 1."""
    out = []
    for j in range(max((len(b) for b in per_rank), default=0)):
        out.extend(b[j] for b in per_rank if j < len(b))
    return out


class Epoch:
    """One recorded pass over a stream's loader.

    Positions run over the batches in the order the loop saw them. An epoch
    cut by a crash and continued after a resume (``wrap(resume_epoch=True)``)
    is stitched: the continuation's rows follow the rows committed before the
    crash. With several ranks, step ``j`` holds batch ``j`` of every rank, in
    rank order.
    """

    def __init__(self, stream: Stream, ranks: list[list[_Part]]) -> None:
        self.stream = stream
        self.schema = stream.manifest  # read after this epoch's commit records (Stream.epoch)
        self._parts = [p for parts in ranks for p in parts]
        self.manifest = self._parts[0].manifest
        self.number = self.manifest.number
        batches, k = [], 0
        for parts in ranks:
            mine = []
            for part in parts:
                ends = np.cumsum(part.batch_sizes())
                mine.extend((k, int(lo), int(hi)) for lo, hi in zip([0, *ends[:-1].tolist()], ends.tolist()))
                k += 1
            batches.append(mine)
        self._batches = _interleave(batches)
        self._complete = all(parts[-1].manifest.complete for parts in ranks)

    def __len__(self) -> int:
        return sum(p.rows for p in self._parts)

    @property
    def complete(self) -> bool:
        """False for an epoch cut short (a crash, an exception, a ``break``) and not continued to its end."""
        return self._complete

    @property
    def provenance(self) -> dict[str, Any]:
        """Loader configuration, sampler state, seeds, versions and host at epoch start."""
        return self.manifest.provenance

    @property
    def parts(self) -> list[EpochManifest]:
        """Manifests of the pieces this epoch was recorded in (ranks, resumes)."""
        return [p.manifest for p in self._parts]

    @cached_property
    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        """(part, local position) of each position."""
        if len(self._parts) == 1:
            return np.zeros(len(self), dtype=np.int64), np.arange(len(self), dtype=np.int64)
        part = np.concatenate([np.full(hi - lo, k, dtype=np.int64) for k, lo, hi in self._batches] or [np.empty(0, np.int64)])
        local = np.concatenate([np.arange(lo, hi, dtype=np.int64) for _, lo, hi in self._batches] or [np.empty(0, np.int64)])
        return part, local

    def _per_position(self, name: str, dtype: Any = np.int64, fill: Any = None) -> np.ndarray:
        return self._in_position_order([p.array(name, p.rows, dtype, fill) for p in self._parts])

    def _in_position_order(self, arrays: list[np.ndarray]) -> np.ndarray:
        """One per-row array from each part's, reordered to the epoch's positions."""
        if len(arrays) == 1:
            return arrays[0]
        part, local = self._map
        offsets = np.concatenate([[0], np.cumsum([p.rows for p in self._parts])])
        return np.concatenate(arrays)[offsets[part] + local]

    @cached_property
    def order(self) -> np.ndarray:
        """Dataset index at each position, in the order the model saw them (int64, (rows,))."""
        return _check_indices(self._per_position(layout.ORDER), self.stream.manifest, f"{self._parts[0].what}/{layout.ORDER}")

    @cached_property
    def batch_sizes(self) -> np.ndarray:
        """Rows of each yielded batch (int64, (batches,)); 1 per item for ``batch_size=None``."""
        return np.array([hi - lo for _, lo, hi in self._batches], dtype=np.int64)

    @cached_property
    def ranks(self) -> np.ndarray:
        """Rank that saw each position (int64, (rows,)); all 0 without torch.distributed."""
        part, _ = self._map
        return np.array([p.rank for p in self._parts], dtype=np.int64)[part]

    @cached_property
    def workers(self) -> np.ndarray:
        """Loader worker that fetched each position (int32, (rows,)); -1 for the main process.

        For an iterable stream with ``W`` workers, ``order // W`` is the item's
        position in its worker's stream.
        """
        return self._per_position(layout.WORKER, np.int32, -1)

    @cached_property
    def base_order(self) -> np.ndarray:
        """Index into the innermost dataset at each position (int64, (rows,)).

        Differs from ``order`` when the loader's dataset is a ``Subset`` or
        ``ConcatDataset`` (nested too); ``base_dataset`` says which innermost
        dataset (``stream.manifest.base_datasets``) each row came from.
        """
        if layout.BASE_ORDER not in self._parts[0].nodes:
            return self.order
        return self._per_position(layout.BASE_ORDER)

    @cached_property
    def base_dataset(self) -> np.ndarray:
        """Position in ``stream.manifest.base_datasets`` of each row's innermost dataset (int32, (rows,))."""
        return self._per_position(layout.BASE_DATASET, np.int32, 0)

    def _rows(self, start: int, stop: int) -> dict[str, Any]:
        """Seen rows of positions ``start:stop``, field by field."""
        if len(self._parts) == 1:
            return self._parts[0].seen.read(start, stop)  # type: ignore[union-attr]
        part, local = self._map
        runs, k = [], start
        while k < stop:  # maximal runs of consecutive local positions in one part
            end = k + 1
            while end < stop and part[end] == part[k] and local[end] == local[end - 1] + 1:
                end += 1
            runs.append(self._parts[part[k]].seen.read(int(local[k]), int(local[end - 1]) + 1))  # type: ignore[union-attr]
            k = end
        return {p: _join([run[p] for run in runs]) for p in runs[0]} if runs else {}

    def _build(self, rows: dict[str, Any], batched: bool) -> Any:
        m = self.stream.manifest
        return unflatten(m.structure or {"type": "none"}, lambda p: rebuild_leaf(m.fields[p], rows[p], batched))

    def __getitem__(self, position: int) -> Any:
        """The seen sample at ``position`` (one row of its batch, without the batch dimension)."""
        n = len(self)
        if not -n <= position < n:
            raise IndexError(f"position {position} is outside epoch {self.number} of stream {self.stream.name!r} ({n} rows)")
        position %= n
        return self._build(self._rows(position, position + 1), batched=False)

    def positions(self, *, index: int) -> np.ndarray:
        """Every position where dataset ``index`` was seen in this epoch (int64, ascending).

        Several with a sampler that draws with replacement; none if never seen.
        """
        return np.nonzero(self.order == index)[0]

    def sample(self, *, index: int) -> Any:
        """The seen sample of dataset ``index`` (its first occurrence). ``KeyError`` if never seen."""
        where = self.positions(index=index)
        if len(where) == 0:
            raise KeyError(f"dataset index {index} was not seen in epoch {self.number} of stream {self.stream.name!r}")
        return self[int(where[0])]

    def batch(self, j: int) -> Any:
        """Batch ``j`` exactly as the loader yielded it."""
        nb = len(self._batches)
        if not -nb <= j < nb:
            raise IndexError(f"batch {j} is outside epoch {self.number} of stream {self.stream.name!r} ({nb} batches)")
        k, lo, hi = self._batches[j % nb]
        return self._build(self._parts[k].seen.read(lo, hi), batched=self.stream.manifest.batched)  # type: ignore[union-attr]

    def batches(self) -> Iterator[Any]:
        """Every batch in the order the loader yielded them; bitwise equal to the originals."""
        return iter(self.replay_loader())

    def replay_loader(self) -> export.ReplayLoader:
        """A re-iterable loader of the recorded batches in recorded order.

        Each batch has the structure, types, dtypes, shapes and values the
        loader yielded; ``len()`` is the number of batches. Fields are read
        forward in chunk-aligned blocks: one decode per chunk per pass.

        Examples
        --------
        >>> for x, y in snapstore.open("runs/exp1.snap")["train"].epoch(0).replay_loader():  # doctest: +SKIP
        ...     loss = criterion(model(x), y)
        """
        return export.ReplayLoader(self)

    @cached_property
    def outputs(self) -> Mapping[str, np.ndarray]:
        """Logged outputs by name, aligned with ``order`` (rows never logged read as NaN or 0)."""
        return _Outputs(self)

    def unpadded(self, field: str, *, lengths: str, position: int | None = None) -> Any:
        """Rows of ``field`` without their padding, cut to the length in field ``lengths``.

        For batches of padded sequences (``pad_sequence(..., batch_first=True)``
        with a lengths tensor): row ``k`` of ``field`` becomes ``row[:length[k]]``.

        Parameters
        ----------
        field : str
            The padded field, rows of shape ``(max_length, *feature_shape)``.
        lengths : str
            The field holding each row's true length (an integer per row).
        position : int, optional
            One row; by default, every row of the epoch as a list.

        Raises
        ------
        KeyError
            ``field`` or ``lengths`` is not a field of the stream.
        """
        infos = self.stream.manifest.fields
        for f in (field, lengths):
            if f not in infos:
                raise KeyError(f"no field {f!r} in stream {self.stream.name!r}; fields: {list(infos)}")
        start, stop = (position, position + 1) if position is not None else (0, len(self))
        rows = self._rows(start, stop)
        values, cut = rows[field], np.asarray(rows[lengths]).astype(np.int64)
        out = [rebuild_leaf(infos[field], values[k : k + 1] if isinstance(values, np.ndarray) else [values[k]], False)[: int(cut[k])]
               for k in range(stop - start)]
        return out[0] if position is not None else out

    def to_numpy(self, *, fields: Any = None, out: Mapping[str, np.ndarray] | None = None, ragged: str = "list") -> dict[str, Any]:
        """Seen rows in seen order, one array per field, plus ``"index"``.

        Each array is allocated once (or taken from ``out``) and filled chunk
        by chunk, so memory stays at one block beyond the result, and at one
        block when every array is a ``numpy.memmap``.

        Parameters
        ----------
        fields : list of str, optional
            Field paths to export (``stream.fields``); all by default.
        out : dict of str to ndarray, optional
            Preallocated destinations (arrays or ``numpy.memmap``) for some or
            all keys; the rest is allocated. Each must have the shape and
            dtype of ``snapstore.export.out_specs(epoch)``.
        ragged : {"list", "pad"}, default "list"
            Ragged fields (rows of differing shapes): a list of row arrays, or
            zero-padded to the widest row plus ``"<field>.lengths"`` (int64,
            (n,) for one varying dimension, else (n, varying dimensions)).

        Returns
        -------
        dict of str to ndarray or list
            ``"index"``: int64, (n,), ``order``; each field: ``(n, *row_shape)``
            in its stored dtype (``StringDType`` for strings, ``uint16`` bit
            patterns for bfloat16), or a list of n arrays for a ragged field
            with ``ragged="list"``; the ``out`` arrays themselves where given.

        Raises
        ------
        UsageError
            An unknown field or ragged mode, or an ``out`` array of the wrong
            shape or dtype.
        SchemaError
            A field's key collides with ``"index"`` or a ``".lengths"`` key
            (leave it out of ``fields``).
        CorruptionError
            A chunk fails to decode or its checksum.

        Examples
        --------
        >>> ep = snapstore.open("runs/exp1.snap")["train"].epoch(0)  # doctest: +SKIP
        >>> (shape, dtype), = snapstore.export.out_specs(ep, ["0"], index=False).values()  # doctest: +SKIP
        >>> x = numpy.lib.format.open_memmap("x.npy", mode="w+", shape=shape, dtype=dtype)  # doctest: +SKIP
        >>> ep.to_numpy(fields=["0"], out={"0": x})["index"]  # doctest: +SKIP
        """
        return export.to_numpy(self, fields=fields, out=out, ragged=ragged)

    def to_dask(self, fields: Any = None) -> dict[str, Any]:
        """Seen rows as ``dask.array``s in seen order, chunk-aligned, plus ``"index"``.

        Parameters
        ----------
        fields : list of str, optional
            Field paths; all by default.

        Returns
        -------
        dict of str to dask.array.Array
            ``"index"``: int64, (n,), ``order``; each field ``(n, *row_shape)``.
            Dask chunks are the stored chunks, limited to the committed rows;
            each task reads one chunk.

        Raises
        ------
        SnapstoreError
            Dask is not installed (``pip install 'snapstore[dask]'``).
        SchemaError
            A selected field is ragged (a dask array needs one row shape).
        """
        return export.to_dask(self, fields)

    def _check_field(self, field: str) -> None:
        if field not in self.schema.fields:
            raise KeyError(f"no seen field {field!r} in stream {self.stream.name!r}; fields: {list(self.schema.fields)}")

    def hashes(self, field: str) -> np.ndarray:
        """Content hash (xxh3_64, see ``snapstore.hashing``) of each seen row of ``field``.

        Returns
        -------
        ndarray of uint64, shape (len(self),)
            Aligned with ``order``; equal hashes mean bitwise-equal rows.

        Raises
        ------
        KeyError
            No such field.
        CorruptionError
            A chunk of the hashes (or, for snapshots without stored hashes, of
            the data) fails to decode.
        """
        self._check_field(field)
        if not len(self):
            return np.empty(0, dtype=np.uint64)
        stored = self._per_position(layout.seen_hashes_path(field), np.uint64, hashing.NO_HASH)
        return _fill_hashes(stored, lambda k: self.gather(field, k))

    def output_hashes(self, name: str) -> np.ndarray:
        """Content hash of each row of output ``name`` (uint64, (len(self),)), aligned with ``order``."""
        if name not in self.schema.outputs:
            raise KeyError(f"no output {name!r} in stream {self.stream.name!r}; logged outputs: {list(self.schema.outputs)}")
        if not len(self):
            return np.empty(0, dtype=np.uint64)
        stored = self._per_position(layout.output_hashes_path(name), np.uint64, hashing.NO_HASH)
        return _fill_hashes(stored, lambda k: self.outputs[name][k])

    def gather(self, field: str, positions: Any) -> np.ndarray | list[np.ndarray]:
        """Rows of seen field ``field`` at ``positions`` (any order): shape (n, *row_shape), or a list of
        arrays for a ragged field; each chunk is decoded once."""
        self._check_field(field)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions outside epoch {self.number} of stream {self.stream.name!r} ({len(self)} rows)")
        part, local = self._map
        parts, where = [], []
        for k in np.unique(part[positions]):
            which = np.nonzero(part[positions] == k)[0]
            parts.append(self._parts[k].seen.readers[field].gather(local[positions[which]]))  # type: ignore[union-attr]
            where.append(which)
        return _reorder(parts, where, self.schema.fields[field])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"<Epoch {self.number} of {self.stream.name!r}: {len(self)} rows, {len(self.batch_sizes)} batches, {state}>"


class _Outputs(Mapping):
    """Logged outputs of an epoch by name, read on first access."""

    def __init__(self, epoch: Epoch) -> None:
        self._epoch = epoch
        self._infos = epoch.stream.manifest.outputs
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._infos:
            raise KeyError(f"no output {name!r} in stream {self._epoch.stream.name!r}; logged outputs: {list(self._infos)}")
        if name not in self._cache:
            info = self._infos[name]
            dtype = numpy_dtype(info.dtype)
            fill = np.nan if dtype.kind in "fc" else 0
            parts = []
            for p in self._epoch._parts:
                key = f"{layout.OUTPUTS_GROUP}/{name}"
                # rows never logged in this part (or not yet committed) read as the fill value
                block = np.full((p.rows, *info.shape), fill, dtype=dtype)
                if key in p.nodes and p.rows:
                    array = _node(p.nodes, key, p.what)
                    n = min(p.rows, array.shape[0])  # an output logged only early may be shorter than the rows
                    reader = store.ChunkReader(array, p.what, rows=n, dtype=dtype, row_shape=_row_shape(info), sparse=True)
                    block[:n] = reader.read(0, n)
                parts.append(block)
            self._cache[name] = self._epoch._in_position_order(parts)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)


def _stored_hashes(group: Any, path: str, n: int) -> np.ndarray:
    """The first ``n`` content hashes stored at ``path`` in ``group``; ``NO_HASH`` where none were stored."""
    node = store.child(group, path)
    if node is None or n == 0:
        return np.full(n, hashing.NO_HASH, dtype=np.uint64)
    return store.ChunkReader(node).read(0, n)


#: Rows hashed at once when hashes must be computed from the data.
_HASH_BLOCK = 4096


def _fill_hashes(h: np.ndarray, rows: Any) -> np.ndarray:
    """``h`` with its ``NO_HASH`` entries hashed from ``rows(positions)``, in blocks."""
    todo = np.nonzero(h == hashing.NO_HASH)[0]
    for lo in range(0, len(todo), _HASH_BLOCK):
        block = todo[lo : lo + _HASH_BLOCK]
        h[block] = hashing.row_hashes(rows(block))
    return h


def _reorder(parts: list[Any], where: list[np.ndarray], info: FieldInfo) -> np.ndarray | list[np.ndarray]:
    """Rows gathered source by source, put back in the order asked for."""
    if not parts:
        return [] if info.ragged else np.empty((0, *(d or 0 for d in info.shape)), dtype=numpy_dtype(info.dtype))
    joined = _join(parts)
    inverse = np.argsort(np.concatenate(where), kind="stable")
    return [joined[k] for k in inverse] if isinstance(joined, list) else joined[inverse]
