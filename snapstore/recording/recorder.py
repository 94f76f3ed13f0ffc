"""Recorder, RecordingLoader and record(): what the model saw, written while it trains.

The training thread only captures and hands off: it flattens each batch into
fields, checks them against the stream's schema, copies them into shared
memory (the loop may modify the batch in place afterwards) and sends an
operation. The writer process (``writer``) stages rows into whole chunks and
commits the epoch manifest every few seconds and at the end of the epoch.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch.distributed as dist
from torch.utils.data import DataLoader

from .. import config, storage
from ..core import layout
from ..core.datasets import RawSource
from ..core.manifest import RanksManifest, SnapshotManifest
from ..core.seen import SeenPolicy
from ..errors import RecordingError, SnapshotExistsError, SnapstoreError, UsageError
from ..storage.chunks import Compressor
from ..storage.lock import ObjectLock, SnapshotLock, writer_lock
from ..storage.sweep import sweep_uncommitted
from .loader import RecordingLoader
from .provenance import utc_now, versions
from .session import OnError, WriteSession

logger = logging.getLogger(__name__)


class Recorder:
    """Records DataLoaders into a snapshot: a Zarr v3 group on disk or object storage.

    Parameters
    ----------
    path : str or os.PathLike
        Snapshot location: a directory (``"runs/exp1.snap"``) or an fsspec
        URL (``"s3://bucket/run.snap"``).
    mode : {"w", "a"}, default "w"
        ``"w"`` creates a new snapshot; ``"a"`` opens an existing one and
        appends epochs to its streams (a resumed run).
    overwrite : bool, default False
        With ``mode="w"``, replace an existing snapshot at ``path``.
    storage_options : dict, optional
        Passed to fsspec for URLs (credentials, ``endpoint_url``).
    compressor : {"lz4", "zstd", "none"}, default "lz4"
        Codec for the chunks of every array; a CRC32C checksum is always
        added. Each array takes the Blosc shuffle that stores its first rows
        in the fewest bytes (bit shuffle for uint8 photo pixels: 1.47x instead
        of 1.13x), and no compression where that saves less than a tenth of
        them (``config.MIN_COMPRESSION_RATIO``: encoded image bytes, noise).
        Measured on the CIFAR-like benchmark (``benchmarks/RESULTS.md``, one
        run): ``"lz4"`` (Blosc-LZ4) stores 0.57x the raw bytes at 486 MB/s;
        ``"zstd"`` (Blosc-Zstd level 1) 0.44x at 319 MB/s; ``"none"`` 1.0x at
        676 MB/s. Use ``"zstd"`` to keep fewer bytes, ``"none"`` when the
        disk is cheap and the CPUs are busy; with ``"lz4"`` the training loop
        itself slowed the least in most runs.
    on_error : {"raise", "warn"}, default "raise"
        When recording itself fails (disk full, permission denied, the store
        vanished): ``"raise"`` raises ``RecordingError`` in the training loop
        at the next batch; ``"warn"`` emits one ``SnapstoreWarning`` and keeps
        training without recording. Either way, everything committed before
        the failure stays readable.

    Notes
    -----
    Recording runs off the training process: each batch is copied into a
    ring of shared memory (in row slices of at most ``config.HAND_OFF_BYTES``)
    and sent to a writer process forked for the ``Recorder``, which
    hashes rows and stages them into whole chunks (whole chunks of a batch
    are encoded from the ring); a thread per CPU there
    compresses, checksums and stores each full chunk while the next are
    staged, and the epoch manifest is committed after the data every
    ``config.DEFAULT_FLUSH_INTERVAL`` (2 s); the end of an epoch and ``close()``
    return once their commit is durable (fsynced on a local disk; see the
    guarantees in docs/FORMAT.md). The memory it adds is bounded,
    whatever the dataset size, by about ``DEFAULT_QUEUE_BYTES`` (the ring)
    + arrays x chunk bytes x 3 + CHUNKS_IN_FLIGHT x chunk bytes x 2`` (see
    ``config.DEFAULT_QUEUE_BYTES``); the training loop blocks
    (back-pressure) while the ring is full. A ``memory://`` store cannot be
    recorded into: it lives in the training process only.

    Raises
    ------
    UsageError
        An unknown ``mode``, ``on_error`` or ``compressor``, or a ``memory://`` URL (the recorder writes
        from a process of its own: see ``recording.writer``).
    SnapshotExistsError
        ``mode="w"`` and something exists at ``path`` (pass ``overwrite=True``
        for a snapshot; anything else is never deleted).
    SnapshotNotFoundError, NotASnapshotError, FormatVersionError
        ``mode="a"`` and ``path`` is no snapshot this version can extend.
    SnapshotLockedError
        Another ``Recorder``, in this process or another, is recording the
        snapshot at ``path`` (``mode="a"``, or ``mode="w"`` with
        ``overwrite=True``): a snapshot has one writer at a time, and the
        lock is held until ``close()``. On object storage the lock is an
        object taken with a conditional write, held as a lease: the message
        names its holder and when a dead writer's lock is taken over
        (docs/OBJECT-STORAGE.md).

    Examples
    --------
    >>> with snapstore.Recorder("runs/exp1.snap") as rec:  # doctest: +SKIP
    ...     train = rec.wrap(train_loader, name="train")
    ...     for x, y in train:
    ...         train.log(loss=criterion(model(x), y))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: Literal["w", "a"] = "w",
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
        compressor: Compressor = config.DEFAULT_COMPRESSOR,
        on_error: OnError = "raise",
    ) -> None:
        self.path = str(path)
        if mode not in ("w", "a"):
            raise UsageError(f"mode={mode!r} is not one of 'w' (new snapshot) or 'a' (append epochs)")
        if on_error not in ("raise", "warn"):
            raise UsageError(f"on_error={on_error!r} is not one of 'raise' or 'warn'")
        if compressor not in storage.COMPRESSORS:
            raise UsageError(f"compressor={compressor!r} is not one of {storage.COMPRESSORS}")
        if self.path.startswith("memory://"):
            raise UsageError(f"{self.path}: a memory:// store lives in one process, and snapstore writes from a "
                             "process of its own; record into a directory or an object store")
        self.on_error = on_error
        self.rank, self.world_size = _rank_and_world()
        self._lock: SnapshotLock | ObjectLock | None = None
        try:
            self._open(mode, overwrite, storage_options)
        except BaseException:
            self._release()
            raise
        self._loaders: dict[str, RecordingLoader] = {}
        self._session = WriteSession(self._root, self.path, storage_options, compressor, on_error, lock=self._lock)

    def _open(self, mode: str, overwrite: bool, storage_options: dict[str, Any] | None) -> None:
        if self.rank == 0:  # one writer per snapshot: rank 0 holds the lock for the ranks of its job
            self._take_lock(create=mode == "w", storage_options=storage_options)
        if mode == "w" and self.world_size > 1:  # rank 0 creates the snapshot, the others join it
            failure: list[str | None] = [None]
            if self.rank == 0:
                try:
                    self._create(overwrite, storage_options)
                except SnapstoreError as e:
                    failure = [str(e)]
                    dist.broadcast_object_list(failure, src=0)
                    raise
            dist.broadcast_object_list(failure, src=0)
            if failure[0] is not None:
                raise SnapstoreError(f"rank 0 could not create the snapshot: {failure[0]}")
            if self.rank != 0:
                self._root = storage.open_group(self.path, mode="a", storage_options=storage_options)
        elif mode == "w":
            self._create(overwrite, storage_options)
        else:
            self._root = storage.open_group(self.path, mode="a", storage_options=storage_options)
            SnapshotManifest.from_dict(self._root.attrs.get(layout.SNAPSHOT_ATTR), where=self.path)
            if self.rank == 0:  # under the lock: chunks a killed writer stored but never committed
                swept = sweep_uncommitted(self._root, self.path)
                if swept:
                    logger.info("%s: removed %d chunks a stopped writer stored but never committed", self.path, swept)

    def _take_lock(self, *, create: bool, storage_options: dict[str, Any] | None) -> None:
        """Lock the snapshot before anything in it is read, swept or replaced: a local directory (made first
        for a new snapshot, so that two recorders creating one path race for the lock, not for the files),
        or the lock object of a URL (``storage.lock.ObjectLock``)."""
        if "://" not in self.path:
            if create and not os.path.lexists(self.path):
                os.makedirs(self.path, exist_ok=True)
            if not os.path.isdir(self.path):
                return
        self._lock = writer_lock(self.path, storage_options)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _create(self, overwrite: bool, storage_options: dict[str, Any] | None) -> None:
        if storage.has_data(self.path, storage_options):
            self._refuse_overwrite(overwrite, storage_options)
        manifest = SnapshotManifest(layout.FORMAT_VERSION, utc_now(), versions())
        self._root = storage.open_group(self.path, mode="w", storage_options=storage_options,
                                      attributes={layout.SNAPSHOT_ATTR: manifest.to_dict()})
        if self._lock is not None:
            self._lock.follow()

    def _refuse_overwrite(self, overwrite: bool, storage_options: dict[str, Any] | None) -> None:
        try:
            root = storage.open_group(self.path, mode="r", storage_options=storage_options)
            is_snapshot = layout.SNAPSHOT_ATTR in root.attrs
        except Exception:  # anything unreadable is not ours to delete
            is_snapshot = False
        if not is_snapshot:
            raise SnapshotExistsError(f"{self.path} exists and is not a snapshot; choose a new path "
                                      "(snapstore never deletes other data)")
        if not overwrite:
            raise SnapshotExistsError(f"{self.path} exists; pass overwrite=True or mode='a', or choose a new path")

    # -- public API -------------------------------------------------------
    def wrap(self, loader: DataLoader, *, name: str, raw: RawSource = "auto", seen: Any = "full",
             resume_epoch: bool = False) -> RecordingLoader:
        """Record ``loader`` as stream ``name``; iterate the result instead of the loader.

        Parameters
        ----------
        loader : torch.utils.data.DataLoader
            Any DataLoader: map-style or iterable dataset, any sampler or
            batch_sampler, any number of workers, any collate_fn.
        name : str
            Stream name, e.g. ``"train"``; one wrap per name per Recorder.
        raw : "auto", Dataset, callable or None, default "auto"
            What to record as the raw sample of each dataset index, once:
            ``"auto"`` fetches the item with torchvision-style
            ``transform``/``transforms``/``target_transform`` disabled when a
            dataset under ``loader.dataset`` sets them, and otherwise takes the
            item itself (no second fetch); a ``Dataset`` or ``index -> sample``
            callable gives raw samples explicitly; ``None`` records none.
        seen : "full", "hash" or dict, default "full"
            What each epoch stores of the seen rows. Every epoch stores its
            order, batch sizes, workers and the content hash (xxh3_64) of
            every seen row and output, and its inverse index for
            ``Stream.where``. ``"full"`` also stores every seen row;
            ``"hash"`` none (about 20 bytes a row in all; reading rows then
            raises ``UsageError``, ``snapstore.verify`` checks a rerun);
            a dict samples: ``{"every": N}`` every row of epochs 0, N, 2N ...,
            ``{"batches": f}`` a fraction ``0 < f <= 1`` of each epoch's
            batches (every ``1/f``-th), ``{"indices": [...]}`` the rows of
            these dataset indices (a probe set); keys combine (a row is
            stored when one of them selects it). The policy is stored in the
            stream's and each epoch's manifest. A stored row that is bitwise
            its raw sample (same fields, dtypes and shapes; no augmentation)
            is stored once, in the raw samples, and read from there.
        resume_epoch : bool, default False
            With ``mode="a"`` after a crash: the first iteration continues the
            stream's last, incomplete epoch (a training job resumed from a
            checkpoint mid-epoch); its rows are stored as a continuation that
            ``Stream.epoch(e)`` stitches to the rows recorded before the crash.
            Later iterations are new epochs.

        Under ``torch.distributed`` with several ranks, every rank calls
        ``wrap`` (it synchronises them once) and records its own rows into
        ``<name>/rank<r>/``; readers merge the ranks.

        Returns
        -------
        RecordingLoader

        Raises
        ------
        UsageError
            ``name`` is already wrapped or not a usable name, ``loader`` is not
            a DataLoader, ``seen`` is not a policy, or the stream exists with
            another kind of loader.
        """
        self._session.check_open()
        policy = SeenPolicy.parse(seen)
        if not isinstance(loader, DataLoader):
            raise UsageError(f"wrap() takes a torch.utils.data.DataLoader, got {type(loader).__name__}")
        if not isinstance(name, str) or not name or "/" in name or name in (".", "..", "zarr.json"):
            raise UsageError(f"stream name {name!r} is not usable; pass a non-empty str without '/', e.g. 'train'")
        if name in self._loaders:
            raise UsageError(f"stream {name!r} is already recorded by this Recorder; "
                             "wrap each loader once and iterate it every epoch")
        group = name
        if self.world_size > 1:
            if self.rank == 0:
                ranks = {layout.RANKS_ATTR: RanksManifest(self.world_size).to_dict()}
                group = storage.child(self._root, name)
                if group is None:
                    self._root.create_group(name, attributes=ranks)
                elif not group.attrs and not storage.members(group, f"{self.path}/{name}"):
                    storage.write_attr(group, layout.RANKS_ATTR, ranks[layout.RANKS_ATTR])  # left by a killed writer
            dist.barrier()
            group = f"{name}/{layout.rank_name(self.rank)}"
        rl = RecordingLoader(self._session, loader, name, group, raw, resume_epoch, seen=policy)
        self._loaders[name] = rl
        return rl

    def close(self) -> None:
        """Finish open epochs (as incomplete), write and commit everything, stop the writer.

        Raises ``RecordingError`` if the writer process failed (unless ``on_error="warn"``).
        """
        if self._session.closed:
            return
        try:
            for rl in self._loaders.values():
                rl.end_epoch()
            self._session.close()
        finally:
            self._release()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the loop's own exception propagates; a writer failure behind it is logged, not raised over it
            self.close()
        except RecordingError:
            logger.exception("recording into %s also failed", self.path)

    def __repr__(self) -> str:
        return f"Recorder({self.path!r}, streams={sorted(self._loaders)})"


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def record(loader: DataLoader, path: str | os.PathLike[str], *, name: str = "train", raw: RawSource = "auto",
           **recorder_options: Any) -> _OneStream:
    """Record one loader into a new snapshot: ``with record(loader, path) as stream: ...``.

    Parameters
    ----------
    loader : DataLoader
    path : str or os.PathLike
        Where the snapshot is written (see ``Recorder``).
    name : str, default "train"
        Stream name.
    raw : see ``Recorder.wrap``.
    **recorder_options
        ``mode``, ``overwrite``, ``storage_options``, ``compressor`` of ``Recorder``.

    Returns
    -------
    A context manager that yields the ``RecordingLoader`` and closes the
    ``Recorder`` on exit.
    """
    return _OneStream(Recorder(path, **recorder_options), loader, name, raw)


class _OneStream:
    def __init__(self, recorder: Recorder, loader: DataLoader, name: str, raw: Any) -> None:
        self.recorder = recorder
        try:
            self.stream = recorder.wrap(loader, name=name, raw=raw)
        except BaseException:
            recorder.close()
            raise

    def __enter__(self) -> RecordingLoader:
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        self.recorder.close()
