"""What the tests share, imported as ``tests.support.<module>`` (never from another test module).

``datasets``: the datasets, samplers, collate functions and the one augmentation
tests record; ``recording``: recording a loader and comparing what was
recorded with what the loop saw; ``snapshots``: finding, damaging and editing
the files of a recorded snapshot, and reading everything back; ``strategies``:
hypothesis strategies; ``ranks_worker``: the one-process-per-rank entry point.
Fixtures are in ``tests/conftest.py``.
"""
