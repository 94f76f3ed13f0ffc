"""Defaults, as named constants. Nothing here reads the environment."""

from __future__ import annotations

#: Target uncompressed bytes of one chunk of a per-row field (the unit of
#: compression, checksumming and random access).
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024

#: Most rows per chunk, whatever the row size.
MAX_CHUNK_ROWS = 65536

#: Seconds after which rows handed to the recorder are committed even when no
#: chunk is full.
DEFAULT_FLUSH_INTERVAL = 2.0

#: Batches that may wait for the background writer before the training loop
#: blocks (back-pressure).
DEFAULT_QUEUE_BATCHES = 16

#: Rows preallocated for an epoch whose length the loader cannot tell.
DEFAULT_UNKNOWN_ROWS = 65536

#: Decoded chunks a reader keeps per array for random access.
DEFAULT_CACHED_CHUNKS = 4

#: Compressor applied to every chunk before its CRC32C checksum.
DEFAULT_COMPRESSOR = "lz4"

#: Target uncompressed bytes an export reads per field at a time, rounded down
#: to whole chunks (at least one chunk). Exports hold a few such blocks.
DEFAULT_EXPORT_BLOCK_BYTES = 8 * 1024 * 1024

#: Uncompressed bytes of index-ordered raw rows gathered at a time when raw
#: samples were captured out of index order (a shuffled loader) and must be
#: streamed in index order (``to_tf_dataset(epoch=None)``).
DEFAULT_GATHER_BYTES = 64 * 1024 * 1024
