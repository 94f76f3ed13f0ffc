"""``storage.pools``: one pool per name and process, kept between calls and made afresh after ``fork``."""

from __future__ import annotations

import os
import sys

import pytest

from snapstore.storage.pools import pool


def test_a_pool_is_kept_between_calls() -> None:
    first = pool("test-kept", 2)
    assert pool("test-kept", 2) is first
    assert first.submit(sum, [1, 2]).result() == 3


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_process_gets_a_pool_of_its_own() -> None:
    parent = pool("test-fork", 1)
    parent.submit(int).result()  # its thread is running when the process forks
    pid = os.fork()
    if pid == 0:  # the child: the inherited executor has no threads, so work sent to it would never run
        try:
            child = pool("test-fork", 1)
            os._exit(0 if child is not parent and child.submit(sum, [2, 3]).result(timeout=10) == 5 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
