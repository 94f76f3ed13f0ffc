"""Progress on stderr: tqdm's redraws as log lines when stderr is not a terminal, and ``--quiet``."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import snapstore
from snapstore.cli.progress import LogLines


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_writes_the_first_status_one_per_interval_and_the_last():
    out, clock = io.StringIO(), Clock()
    lines = LogLines(out, interval=10, clock=clock)
    for t, status in [(0, "0%"), (1, "10%"), (5, "50%"), (11, "60%"), (12, "70%"), (13, "100%")]:
        clock.now = t
        lines.write("\r" + status + "   ")  # tqdm pads over a longer previous status
    lines.write("\n")  # the bar closes
    assert out.getvalue() == "0%\n60%\n100%\n"


def test_log_lines_passes_other_text_through_and_keeps_its_newlines():
    out = io.StringIO()
    lines = LogLines(out, interval=10, clock=Clock())
    print("a warning", file=lines)  # two writes: the text, then "\n"
    lines.write("\rexport: 0%")
    lines.write("\n")
    print("done", file=lines)
    assert out.getvalue() == "a warning\nexport: 0%\ndone\n"


def test_a_real_tqdm_bar_in_a_log():
    out, clock = io.StringIO(), Clock()
    with tqdm(total=4, desc="export", file=LogLines(out, interval=10, clock=clock), mininterval=0) as bar:
        for k in range(4):
            clock.now = 3 * k
            bar.update()
    text = out.getvalue()
    assert "\r" not in text
    got = text.splitlines()
    assert [line.split(":")[0] for line in got] == ["export"] * len(got)
    assert "0/4" in got[0] and "4/4" in got[-1] and "100%" in got[-1]
    assert len(got) <= 3  # the first, one after 10 s, the last


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "run.snap"
    data = TensorDataset(torch.randn(40, 4), torch.arange(40) % 5)
    with snapstore.record(DataLoader(data, batch_size=8, shuffle=True), path) as stream:
        for _ in range(2):
            for _ in stream:
                pass
    return path


def _commands(snap, tmp_path) -> dict[str, list[str]]:
    return {
        "export": ["export", str(snap), "--stream", "train", "--epoch", "0", "-o", str(tmp_path / "e0")],
        "audit": ["audit", str(snap)],
        "diff": ["diff", str(snap), str(snap)],
    }


@pytest.mark.parametrize("command", ["export", "audit", "diff"])
def test_progress_goes_to_stderr_as_plain_lines_when_it_is_not_a_terminal(snap, tmp_path, command):
    argv = _commands(snap, tmp_path)[command]
    proc = subprocess.run([sys.executable, "-m", "snapstore", *argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith(f"{command}:")  # the bar's first state, then its last
    assert "100%" in [line for line in lines if line.startswith(f"{command}:")][-1]
    assert f"{command}:" not in proc.stdout


@pytest.mark.parametrize("command", ["export", "audit", "diff"])
@pytest.mark.parametrize("where", ["global", "command"])
def test_quiet_turns_progress_off(snap, tmp_path, command, where):
    argv = _commands(snap, tmp_path)[command]
    argv = ["--quiet", *argv] if where == "global" else [*argv, "-q"]
    proc = subprocess.run([sys.executable, "-m", "snapstore", *argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout  # the result is still printed
