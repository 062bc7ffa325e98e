"""The layer contract of pyproject.toml holds for the code, and import-linter really fails when code breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts over the package found at `src`."""
    return subprocess.run([str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"], capture_output=True,
                          text=True, timeout=300, cwd=src.parent, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def copied_src(tmp_path: Path) -> Path:
    """A copy of src/ to break on purpose."""
    return Path(shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")))


def test_the_code_keeps_every_contract() -> None:
    result = lint(REPO / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_layers_contract(copied_src: Path) -> None:
    splits = copied_src / "reprocls" / "data" / "splits.py"
    splits.write_text(splits.read_text() + "\nfrom reprocls.experiments import run  # noqa: E402,F401\n")
    result = lint(copied_src)
    assert result.returncode == 1
    assert "layers: each imports only the layers below it BROKEN" in result.stdout
    assert "reprocls.data is not allowed to import reprocls.experiments" in result.stdout


def test_an_import_circle_breaks_the_acyclic_contract(copied_src: Path) -> None:
    splits = copied_src / "reprocls" / "data" / "splits.py"  # datasets imports splits; now splits imports datasets
    splits.write_text(splits.read_text() + "\nfrom reprocls.data import datasets  # noqa: E402,F401\n")
    result = lint(copied_src)
    assert result.returncode == 1
    assert "no import circles between the modules of any package BROKEN" in result.stdout
