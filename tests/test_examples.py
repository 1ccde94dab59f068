"""The scripts in examples/ run as a user would run them, so they never rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the venv's `idcmap` console script
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_python_api_example(tmp_path: Path) -> None:
    out = tmp_path / "api-out"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "python_api.py"), str(EXAMPLES / "8955.tiff"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "IDC region" in run.stdout and "outputs in" in run.stdout
    summary = json.loads((out / "8955" / "summary.json").read_text())
    assert summary["regions"] >= 1


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_batch_cli_example(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "8955.tiff").symlink_to(EXAMPLES / "8955.tiff")
    out = tmp_path / "batch-out"
    run = subprocess.run(
        ["bash", str(EXAMPLES / "batch_cli.sh"), str(slides), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (out / "8955" / "summary.json").is_file()
    assert "0 done, 1 skipped" in run.stdout + run.stderr  # the rerun skips the finished slide
    assert run.stdout.splitlines()[-1] == "8955"  # the listing of OUT: one folder per slide
