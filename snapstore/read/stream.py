"""``Stream``: one recorded loader, its schema, raw samples and epochs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

from torch.utils.data import Dataset, TensorDataset

from .. import storage
from ..core import layout
from ..core.manifest import FieldInfo, StreamManifest, merge_ranks
from ..errors import UsageError
from ..storage.tree import epoch_groups, epoch_pieces, stream_ranks, stream_summary
from .epoch import Epoch, Piece
from .plan import Fields
from .raw import RawSamples
from .replay import StoreDataset, to_tensor_dataset
from .where import SeenAt, seen_at


class Stream:
    """One recorded loader: its schema, raw samples and epochs.

    A stream recorded by several ranks (``torch.distributed``) reads as one:
    its epochs interleave the ranks' batches (``Epoch.ranks`` tells which rank
    saw each position) and ``stream.rank(r)`` is one rank's own view.
    """

    def __init__(self, group: Any, path: str, *, reopen: Callable[[], Stream] | None = None,
                 name: str | None = None) -> None:
        self._group = group
        self.path = path
        self._reopen = reopen  # a picklable way to open this stream again (in a DataLoader worker)
        self._rank: int | None = None  # set on a one-rank view from rank()
        self._name = group.basename if name is None else name  # a rank's view is named after its stream
        self._read_manifests()

    def _read_manifests(self) -> None:
        ranks = stream_ranks(self._group, self.path)
        self._ranks = [g for _, g, _ in ranks]
        self._paths = [where for _, _, where in ranks]
        manifests = [StreamManifest.from_dict(g.attrs.get(layout.STREAM_ATTR), where=p, name=self._name)
                     for g, p in zip(self._ranks, self._paths)]
        self.manifest = merge_ranks(manifests)
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
        view = Stream(self._ranks[r], self._paths[r], reopen=self._reopen, name=self.name)
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

    @property
    def epochs(self) -> list[int]:
        """Recorded epoch numbers, ascending (complete or not), listed again at each access: epochs committed
        since the stream was opened, by this process or another, are included."""
        return sorted({e for g, where in zip(self._ranks, self._paths) for e in epoch_groups(g, where)})

    def epoch(self, number: int) -> Epoch:
        """Epoch ``number`` (negative numbers count from the last), stitched across resumes and ranks."""
        epochs = self.epochs
        if number < 0 and -number <= len(epochs):
            number = epochs[number]
        if number not in epochs:
            raise KeyError(f"stream {self.name!r} has no epoch {number}; recorded epochs: {epochs}")
        pieces = []  # the epoch's pieces on each rank that recorded it; listing them reads their commit records
        for r, (group, where) in enumerate(zip(self._ranks, self._paths)):
            found = epoch_groups(group, where).get(number)
            if found is not None:
                pieces.append((r, epoch_pieces(*found)))
        # The schema is read after the commit records, so it covers every committed row even while
        # a writer is adding to both (a live recording).
        self._group = storage.reread(self._group)
        self._read_manifests()
        return Epoch(self, [[Piece(self, g, r, where, number, k) for k, g, where in mine] for r, mine in pieces])

    def __iter__(self) -> Iterator[Epoch]:
        return (self.epoch(e) for e in self.epochs)

    def where(self, *, index: int) -> list[SeenAt]:
        """Every (epoch, rank, batch, position) at which dataset ``index`` was seen, in that order.

        Read from each epoch's inverse index (``where/``, written at the end
        of the epoch), a chunk or two per epoch and rank whatever the epoch's
        size, plus its batch sizes; the epochs are not opened (``where.py``).
        An epoch cut short has no index and its order is scanned instead.
        Works for every ``seen=`` policy.

        Parameters
        ----------
        index : int
            A dataset index (for an iterable stream: a position in its stream).

        Returns
        -------
        list of SeenAt
            Named tuples ``(epoch, rank, batch, position)``; ``batch`` and
            ``position`` count in the epoch as ``Epoch`` does (ranks
            interleaved). Empty if the index was never seen.

        Examples
        --------
        >>> snapstore.open("runs/exp1.snap")["train"].where(index=7)  # doctest: +SKIP
        [SeenAt(epoch=0, rank=0, batch=3, position=103), SeenAt(epoch=1, rank=0, batch=0, position=12)]
        """
        return seen_at(list(zip(self._ranks, self._paths)), int(index))

    @cached_property
    def raw(self) -> RawSamples:
        """Raw samples by dataset index, as a map-style ``Dataset``."""
        return RawSamples(self, list(zip(self._ranks, self._paths)))

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
        return to_tensor_dataset(self, epoch)

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
        if self._reopen is None:
            raise UsageError(f"stream {self.name!r} was not opened through snapstore.open(); "
                             "open it with snapstore.open(path)[name]")
        length = len(self.raw) if epoch is None else len(self.epoch(epoch))
        number = None if epoch is None else self.epoch(epoch).number
        return StoreDataset(self._reopen, self.name, number, rank=self._rank, length=length)

    def to_tf_dataset(self, epoch: int | None = None, *, channels_last: bool = False, fields: Fields = None) -> Any:
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
        from ..export.tf import to_tf_dataset  # TensorFlow is optional

        return to_tf_dataset(self, epoch, channels_last=channels_last, fields=fields)

    def info(self) -> dict[str, Any]:
        """A JSON-able summary of the stream from its manifests (the entry of ``Snapshot.info()``)."""
        return stream_summary(self._group, self.path, self.name)

    def __repr__(self) -> str:
        return f"<Stream {self.name!r} epochs={self.epochs} fields={list(self.manifest.fields)}>"
