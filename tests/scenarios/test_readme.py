"""Every ```python block of README.md runs, and the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


PYTHON_BLOCKS = _blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("number", range(len(PYTHON_BLOCKS)))
def test_readme_python_block_runs(number, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # blocks write their snapshots into the working directory
    code = compile(PYTHON_BLOCKS[number], f"README.md python block {number}", "exec")
    exec(code, {"__name__": f"readme_block_{number}"})  # noqa: S102 - running the docs is the test
    assert any(p.suffix == ".snap" for p in tmp_path.iterdir())


def test_readme_install_and_test_commands_are_what_ci_runs():
    bash = _blocks("bash")
    install = next(b.strip() for b in bash if "pip install" in b)
    test = next(b.strip() for b in bash if "pytest" in b)
    assert install == "pip install torch==2.13.0 && pip install -e '.[test,tf,dask]'"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "python -m pip install torch==2.13.0" in ci
    assert "python -m pip install -e '.[test,tf,dask]'" in ci
    assert ci.index("python -m pip install torch==2.13.0") < ci.index("python -m pip install -e '.[test,tf,dask]'")
    assert test in ci
