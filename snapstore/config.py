"""Defaults, as named constants. Nothing here reads the environment."""

from __future__ import annotations

from typing import Final

#: Target uncompressed bytes of one chunk of a per-row field (the unit of
#: compression, checksumming and random access).
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024

#: Most rows per chunk, whatever the row size.
MAX_CHUNK_ROWS = 65536

#: Seconds after which rows handed to the recorder are committed even when no
#: chunk is full.
DEFAULT_FLUSH_INTERVAL = 2.0

#: Seconds a writer's lock on a snapshot on an object store stays valid without
#: a refresh (``storage.ObjectLock``). The writer refreshes it at its flushes,
#: every quarter lease; once a killed writer's lock is older than its lease, the
#: next ``Recorder`` takes it over.
WRITER_LEASE_SECONDS = 60.0

#: Most bytes of a batch's rows the training thread copies and hands over at a
#: time: larger batches (an ImageNet-sized batch of 256 is ~190 MB) go over in
#: row slices, each waiting for room in the ``DEFAULT_QUEUE_BYTES`` ring, so the
#: recorder never holds a whole copy of a large batch.
HAND_OFF_BYTES = 16 * 1024 * 1024

#: Bytes of the shared-memory ring handed-over rows wait in for the writer
#: process (``recording.writer``): the training loop blocks while it is full,
#: whatever the batch size.
#:
#: Memory recording adds is bounded, independent of the dataset size, by
#: about::
#:
#:     DEFAULT_QUEUE_BYTES + one hand-off by value
#:         + fields * chunk bytes * 3 + CHUNKS_IN_FLIGHT * chunk bytes * 2
#:
#: where the ring is shared by the training process and the writer process,
#: "one hand-off by value" is a batch's rows that are not plain arrays (ragged
#: or strings), sent through a pipe, "fields" counts every recorded array
#: (seen, raw, order, outputs, ...) and "chunk bytes" is at most
#: ``DEFAULT_CHUNK_BYTES`` rounded up to a row (in the writer process: one
#: staging buffer per array and two recycled ones per chunk layout; a chunk
#: in flight holds its rows, in the ring when a batch held it whole, and, once
#: encoded, its bytes). CIFAR-like (batch
#: 256 of 15 KB samples): at most 64 + 6 x 2 x 3 + 8 x 2 x 2 MiB, about 140 MB.
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024

#: Chunks handed to the encoders that may wait to be encoded and stored
#: (``_sinks.ChunkWriter``); the writer blocks beyond that. Each holds its
#: staged rows until encoded and its encoded bytes until stored.
CHUNKS_IN_FLIGHT = 8

#: Most threads encoding (recording) or decoding (reading) chunks at once:
#: one per CPU up to this.
MAX_CODEC_THREADS = 4

#: Most threads fsyncing files and folders at once at a durable commit (``storage.writers``): they wait
#: on the disk, not a CPU, and fsyncs issued together are committed together by the file system.
SYNC_THREADS = 8

#: Rows preallocated for an epoch whose length the loader cannot tell.
DEFAULT_UNKNOWN_ROWS = 65536

#: Decoded chunks a reader keeps per array for random access.
DEFAULT_CACHED_CHUNKS = 4

#: Compressor of every array's chunks, before their CRC32C checksum (where it pays: ``MIN_COMPRESSION_RATIO``).
DEFAULT_COMPRESSOR: Final = "lz4"

#: Least ratio of a field's bytes to its compressed bytes worth compressing for:
#: a new array whose first rows Blosc shrinks by less (natural uint8 pixels
#: without bit shuffle, encoded JPEG or PNG bytes, noise) stores its chunks
#: uncompressed, checksummed still; compressing them cost the encoders most of
#: their CPU for under a tenth of the bytes (issue 17).
MIN_COMPRESSION_RATIO = 1.1

#: Bytes of a new array's first rows (at least one row) that its compressor is
#: tried on to choose the byte shuffle and whether to compress at all.
CODEC_SAMPLE_BYTES = 256 * 1024

#: Target uncompressed bytes an export reads per field at a time, rounded down
#: to whole chunks (at least one chunk). Exports hold a few such blocks.
DEFAULT_EXPORT_BLOCK_BYTES = 8 * 1024 * 1024

#: Uncompressed bytes of index-ordered raw rows gathered at a time when raw
#: samples were captured out of index order (a shuffled loader) and must be
#: streamed in index order (``to_tf_dataset(epoch=None)``).
DEFAULT_GATHER_BYTES = 64 * 1024 * 1024

#: Dataset indices a finding of ``snapstore.audit``/``compare``/``diff``
#: lists; the total is always counted in ``Finding.count``.
MAX_FINDING_INDICES = 100

#: Stability and raw-vs-seen checks: a field that differs (between epochs, or
#: from its raw sample) for at most this fraction of the indices compared is
#: meant to be unchanged, and the few that differ are findings; a field that
#: differs for more (an augmented input) is not.
UNSTABLE_MAX_FRACTION = 0.05

#: Value check: the typical range of a field runs from this quantile of its
#: rows' minima to the (1 - this) quantile of their maxima.
OUTLIER_QUANTILE = 0.05

#: Value check: rows reaching further outside the typical range than this
#: many times its width are findings ("orders of magnitude outside").
OUTLIER_WIDTHS = 20.0

#: Value check: fewest rows an epoch needs before outliers are judged.
OUTLIER_MIN_ROWS = 20

#: Bytes of differing rows ``snapstore.diff`` reads per field and epoch to
#: measure the largest absolute difference (hashes locate every difference).
DIFF_LOCATE_BYTES = 256 * 1024 * 1024

#: Most bytes of one ``zarr.json`` a reader accepts; a manifest of thousands
#: of fields takes a few hundred KB.
MAX_METADATA_BYTES = 16 * 1024 * 1024

#: Deepest nesting of lists and objects in one ``zarr.json`` a reader
#: accepts: a batch structure nested to ``core.manifest.MAX_DEPTH`` takes
#: about 135 levels.
MAX_METADATA_DEPTH = 256
