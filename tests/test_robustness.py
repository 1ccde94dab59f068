"""Robustness of ``idcmap run``: bad input, bad options and model files, unwritable or full
output folders, interrupted runs (SIGINT, SIGTERM, SIGKILL) and two runs on one folder.

Real files and real backends throughout; the signal and concurrency tests run ``idcmap`` as a
subprocess (``python -m idcmap``) on small generated pyramids with a tiny real model file.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from geojson_check import validate_qupath_geojson
from PIL import Image
from pipeline_helpers import tiny_model_file
from shared_data import SHARED, needs_shared
from tiffgen import cell_image, write_pyramid_tiff

from idcmap.cli.main import main
from idcmap.errors import ModelError, UsageError
from idcmap.output.export import load_heatmap_npz
from idcmap.output.folder import OUTPUT_FILES

NEGATIVE = SHARED / "wsi" / "negative"


# --------------------------------------------------------------------------- helpers


def flat_slide(path: Path, seed: int) -> Path:
    """A 2-level lossless pyramid (2 µm/px) of 200-µm cells of flat H&E-like colours with a
    glass row: tissue for the tissue detector, and quick to encode as the heatmap PNG."""
    red = np.random.default_rng(seed).integers(60, 250, size=(4, 6)).astype(np.uint8)
    img = cell_image(red, 100, glass_rows=1)
    return write_pyramid_tiff(path, img, 2.0, downsamples=(1, 4), compression="zlib")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four small slides and a tiny real model file."""
    d = tmp_path_factory.mktemp("kit")
    kit = {"model": tiny_model_file(d)}
    for i, name in enumerate(("s0", "s1", "s2", "s3")):
        kit[name] = flat_slide(d / f"{name}.tiff", seed=10 + i)
    return kit


def slides(kit: dict[str, Path], n: int) -> list[str]:
    return [str(kit[f"s{i}"]) for i in range(n)]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``idcmap`` in this process; returns (exit status, stdout, stderr)."""
    try:
        rc = main(args)
    except SystemExit as e:  # argparse
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def spawn(args: list[str]) -> subprocess.Popen[str]:
    """``python -m idcmap ARGS`` with SIGINT at its default (a shell may start tests with SIGINT
    ignored, which Python would then keep ignoring)."""
    return subprocess.Popen(
        [sys.executable, "-m", "idcmap", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(cond, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"idcmap ended (rc {proc.returncode}) before the point:\n{out}\n{err}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for the interruption point")
        time.sleep(0.01)


def assert_complete(out: Path, stem: str) -> None:
    """Every output file of a finished slide is there and parses."""
    folder = out / stem
    names = {f.format(stem=stem) for f in OUTPUT_FILES}
    assert names <= {p.name for p in folder.iterdir()}, sorted(p.name for p in folder.iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["regions"] >= 0 and summary["slide"]["path"].endswith(f"{stem}.tiff")
    validate_qupath_geojson(json.loads((folder / f"{stem}.geojson").read_text()))
    hm = load_heatmap_npz(folder / "heatmap.npz")
    k = summary["mask_png_px_per_cell"]  # each heatmap cell a k×k block
    with Image.open(folder / "mask.png") as m:
        assert m.size == (k * hm.prob.shape[1], k * hm.prob.shape[0])
    with Image.open(folder / "heatmap.png") as im:
        im.load()


def assert_no_partial(out: Path, stems: list[str], *, leftovers_ok: bool) -> list[str]:
    """Each slide is complete under its final name or absent; the only other entries are (empty)
    lock files, the cohort table (whole, one row per slide at most) and (when ``leftovers_ok``)
    ``.<stem>.tmp-*`` folders. Returns the finished stems."""
    done = []
    for p in out.iterdir():
        name = p.name
        if name in stems:
            assert_complete(out, name)
            done.append(name)
        elif name.startswith(".") and name.endswith(".lock"):  # per-slide flock files
            assert p.is_file() and p.stat().st_size == 0
        elif name == "cohort.csv":  # replaced atomically: always a whole table
            with open(p, newline="") as f:
                rows = list(csv.DictReader(f))
            assert len({r["slide"] for r in rows}) == len(rows)  # failed slides too
            assert all(r["status"] in ("done", "skipped", "failed") for r in rows)
        elif leftovers_ok and any(name.startswith(f".{s}.tmp-") for s in stems):
            assert p.is_dir()
        else:
            pytest.fail(f"unexpected entry in the output folder: {name}")
    return sorted(done)


def marks(stdout: str, mark: str) -> int:
    """Number of per-slide lines with ``mark`` (✓ done, - skipped, ✗ failed)."""
    return sum(ln.startswith(f"{mark} ") for ln in stdout.splitlines())


def assert_one_line_errors(text: str) -> None:
    assert "Traceback" not in text, text
    assert "Task exception" not in text and "never awaited" not in text, text


# --------------------------------------------------------------------------- bad input


@needs_shared
def test_bad_inputs_fail_one_line_each_and_batch_goes_on(
    tmp_path: Path, kit: dict[str, Path]
) -> None:
    """Not a slide, truncated files, corrupt tiles (OpenSlide and a TIFF corrupted here),
    unopenable TIFF, missing file, folder without slides: one ✗ line each, the good slide is
    done, exit 1, no traceback, no noise from the readers' threads."""
    bad = tmp_path / "bad"
    bad.mkdir()
    # a TIFF cut in half: its reduced level (and part of level 0) is lost
    data = kit["s1"].read_bytes()
    (bad / "half.tiff").write_bytes(data[: len(data) // 2])
    # a real SVS cut in half
    cmu = (SHARED / "wsi" / "CMU-1-Small-Region.svs").read_bytes()
    (bad / "cmu-half.svs").write_bytes(cmu[: len(cmu) // 2])
    # a TIFF whose level-0 tiles are garbage (the reduced level, read when opening, is fine)
    corrupt = shutil.copy(kit["s2"], bad / "corrupt.tiff")
    with tifffile.TiffFile(corrupt) as tif:
        page = tif.pages.first
        offsets, counts = page.dataoffsets, page.databytecounts
    with open(corrupt, "r+b") as f:
        for off, n in zip(offsets, counts, strict=True):
            f.seek(off + 16)
            f.write(bytes(range(256)) * ((n - 32) // 256))
    (bad / "notes.svs").write_text("this is a text file, not a slide\n")
    (bad / "empty-folder").mkdir()
    inputs = [
        str(bad / "notes.svs"),
        str(NEGATIVE / "broken.svs"),
        str(NEGATIVE / "unopenable.tiff"),
        str(NEGATIVE / "unreadable.svs"),
        str(bad / "half.tiff"),
        str(bad / "cmu-half.svs"),
        str(corrupt),
        str(bad / "missing.svs"),
        str(bad / "empty-folder"),
        str(kit["s0"]),
    ]
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "idcmap",
            "run",
            *inputs,
            "--out",
            str(out),
            "--model",
            str(kit["model"]),
            "--quiet",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_one_line_errors(proc.stdout + proc.stderr)
    assert proc.stderr.strip() == "", proc.stderr
    lines = proc.stdout.splitlines()
    fails = [ln for ln in lines if ln.startswith("✗ ")]
    assert len(fails) == len(inputs) - 1, proc.stdout
    for path in inputs[:-1]:
        (line,) = [ln for ln in fails if ln.startswith(f"✗ {path}: ")]
        assert len(line) - len(path) < 130, line  # short: the backends' details need --debug
        assert line.count(Path(path).name) == 1, line  # the file is named once
    by_name = {ln.split(": ", 1)[0][2:]: ln for ln in fails}
    assert "no such file" in by_name[inputs[7]]
    assert "folder without slides" in by_name[inputs[8]]
    assert "corrupt" in by_name[str(corrupt)]
    assert f"✓ {kit['s0']}" in proc.stdout
    assert "1 done, 0 skipped, 9 failed" in proc.stdout
    assert_complete(out, "s0")
    assert assert_no_partial(out, ["s0"], leftovers_ok=False) == ["s0"]


def test_an_unknown_argument_is_told_with_its_commands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, _, err = run_cli(["info", "a.svs", "b.svs"], capsys)
    assert rc == 2 and err.startswith("usage: idcmap info "), err
    assert err.strip().endswith("idcmap info: error: unrecognized arguments: b.svs"), err
    rc, _, err = run_cli(["evaluate", "slides", "a.tiff", "--bogus"], capsys)
    assert rc == 2 and err.startswith("usage: idcmap evaluate slides "), err
    rc, _, err = run_cli(["--bogus"], capsys)
    assert rc == 2 and err.startswith("usage: idcmap [-h]"), err


def test_only_bad_inputs_exit_nonzero(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    rc, out, err = run_cli(
        [
            "run",
            str(tmp_path / "empty"),
            str(tmp_path / "nope.tiff"),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(kit["model"]),
            "-q",
        ],
        capsys,
    )
    assert rc == 1
    assert "0 done, 0 skipped, 2 failed" in out
    assert_one_line_errors(out + err)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("args", "rc", "needle"),
    [
        (["--stride", "0"], 2, "--stride"),
        (["--stride", "30"], 2, "--stride"),
        (["--stride", "-5"], 2, "--stride"),
        (["--threshold", "1.5"], 2, "--threshold"),
        (["--threshold", "nan"], 2, "--threshold"),
        (["--device", "tpu"], 2, "device"),
        (["--mpp", "-0.5"], 2, "--mpp"),
        (["--mpp", "0"], 2, "--mpp"),
        (["--min-tissue", "2"], 2, "--min-tissue"),
        (["--workers", "-1"], 2, "--workers"),
        (["--backend", "bioformats"], 2, "--backend"),
        (["--batch-size", "0"], 2, "--batch-size"),
    ],
)
def test_nonsense_options_are_refused(
    tmp_path: Path,
    kit: dict[str, Path],
    args: list[str],
    rc: int,
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "o"
    got, so, se = run_cli(
        ["run", str(kit["s0"]), "--out", str(out), "--model", str(kit["model"]), "-q", *args],
        capsys,
    )
    assert got == rc
    assert needle in se
    error_lines = [ln for ln in se.splitlines() if "error" in ln]
    assert len(error_lines) == 1, se  # argparse adds its usage line before it
    assert_one_line_errors(so + se)
    assert not (out / "s0").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_but_absent(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(
        [
            "run",
            str(kit["s0"]),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(kit["model"]),
            "--device",
            "cuda",
            "-q",
        ],
        capsys,
    )
    assert rc == 2 and "no CUDA GPU" in err and "--device cpu" in err
    assert_one_line_errors(out + err)


def test_debug_shows_the_details_of_a_failure(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    args = ["run", str(bad), "--out", str(tmp_path / "o"), "--model", str(kit["model"]), "-q"]
    rc, out, _ = run_cli(args, capsys)
    assert rc == 1 and "openslide" not in out  # each backend's own error: only with --debug
    rc, out, _ = run_cli([*args, "--debug"], capsys)
    assert rc == 1 and "openslide" in out and "tiffslide" in out


def test_info_on_a_folder_says_it_takes_one_slide(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_cli(["info", str(kit["s0"].parent)], capsys)
    assert rc == 2 and "info takes one slide" in err and "slides in it" in err, err
    assert err.count("\n") == 1


def test_mpp_contradicting_the_metadata_is_one_warning_line(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """kit slides say 2 µm/px: --mpp 20 is warned about (naming both), --mpp 2.4 is not."""
    base = ["run", str(kit["s0"]), "--model", str(kit["model"]), "-q", "--workers", "0"]
    rc, out, err = run_cli([*base, "--out", str(tmp_path / "a"), "--mpp", "20"], capsys)
    assert rc == 0, out + err
    (line,) = [ln for ln in err.splitlines() if "warning" in ln]
    assert line.startswith("idcmap: warning: s0.tiff: --mpp 20 ") and "2 µm/px" in line, err
    rc, out, err = run_cli([*base, "--out", str(tmp_path / "b"), "--mpp", "2.4"], capsys)
    assert rc == 0 and "warning" not in err, err


def test_debug_shows_the_traceback(tmp_path: Path, kit: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="threshold="):
        main(
            [
                "run",
                str(kit["s0"]),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(kit["model"]),
                "--threshold",
                "1.5",
                "--debug",
                "-q",
            ]
        )


# --------------------------------------------------------------------------- model files


class _Boom:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _model_copy(kit: dict[str, Path], folder: Path) -> Path:
    folder.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(kit["model"].with_suffix(suffix), folder / f"m{suffix}")
    cfg = json.loads((folder / "m.json").read_text())
    cfg["weights_file"] = "m.safetensors"
    (folder / "m.json").write_text(json.dumps(cfg))
    return folder / "m.json"


@pytest.mark.parametrize(
    "case",
    [
        "flipped-byte",
        "random-json",
        "pickle-as-json",
        "pickle-as-safetensors",
        "pickle-unchecked",
        "truncated-weights",
        "missing-weights",
        "missing-json",
    ],
)
def test_damaged_or_foreign_model_is_refused_never_unpickled(
    tmp_path: Path, kit: dict[str, Path], case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "UNPICKLED"
    evil = pickle.dumps({"state_dict": _Boom(marker)})
    model = _model_copy(kit, tmp_path / "model")
    weights = model.with_suffix(".safetensors")
    needle = {
        "flipped-byte": "sha256",
        "random-json": "not an idcmap model",
        "pickle-as-json": "cannot read model config",
        "pickle-as-safetensors": "sha256",
        "pickle-unchecked": "cannot load weights",
        "truncated-weights": "sha256",
        "missing-weights": "missing",
        "missing-json": "not found",
    }[case]
    if case == "flipped-byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif case == "random-json":
        model.write_text(json.dumps({"hello": [1, 2, 3], "format": "something-else"}))
    elif case == "pickle-as-json":
        model.write_bytes(evil)
    elif case == "pickle-as-safetensors":
        weights.write_bytes(evil)
    elif case == "pickle-unchecked":  # a config without sha256 pointing at a pickle
        cfg = json.loads(model.read_text())
        cfg["weights_sha256"] = ""
        model.write_text(json.dumps(cfg))
        weights.write_bytes(evil)
    elif case == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "missing-weights":
        weights.unlink()
    elif case == "missing-json":
        model = tmp_path / "nope.json"
    rc, out, err = run_cli(
        ["run", str(kit["s0"]), "--out", str(tmp_path / "o"), "--model", str(model), "-q"], capsys
    )
    assert rc == 2, out + err
    assert needle in err and err.count("\n") == 1, err
    assert_one_line_errors(out + err)
    assert not marker.exists(), "a pickle was unpickled"
    assert not (tmp_path / "o" / "s0").exists()
    with pytest.raises(ModelError):
        main(
            [
                "run",
                str(kit["s0"]),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(model),
                "--debug",
                "-q",
            ]
        )


# --------------------------------------------------------------------------- output folder


def test_output_path_under_a_file_is_refused(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Root ignores permission bits, so 'unwritable' is a path that cannot be a folder."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, out, err = run_cli(
        ["run", str(kit["s0"]), "--out", str(blocker / "sub"), "--model", str(kit["model"]), "-q"],
        capsys,
    )
    assert rc == 2 and "cannot write to output folder" in err and "--out" in err
    assert_one_line_errors(out + err)
    # the file itself as --out (or as the viewer's folder): said so, not "File exists"
    rc, out, err = run_cli(
        ["run", str(kit["s0"]), "--out", str(blocker), "--model", str(kit["model"]), "-q"], capsys
    )
    assert rc == 2 and f"{blocker} is a file, not a folder; choose another --out" in err, err
    rc, out, err = run_cli(["view", str(blocker), "--no-browser"], capsys)
    assert rc == 2 and "a file, not a folder" in err, err


@contextmanager
def _mount_tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {res.stderr.strip()}"
        )
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_output_folder(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only mount stops root too (chmod 0o500 would not)."""
    with _mount_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        rc, out, err = run_cli(
            ["run", str(kit["s0"]), "--out", str(ro / "out"), "--model", str(kit["model"]), "-q"],
            capsys,
        )
    assert rc == 2 and "cannot write to output folder" in err
    assert_one_line_errors(out + err)


def test_full_disk_fails_the_slide_cleanly_and_keeps_finished_ones(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1 MiB tmpfs: the first slide fits; then the disk is filled up to 16 KiB: the next
    slides fail on one line each (no temporary folder left), the first stays complete."""
    with _mount_tmpfs(tmp_path / "small", "size=1m") as disk:
        out = disk / "out"
        args = ["--out", str(out), "--model", str(kit["model"]), "-q", "--workers", "0"]
        rc, so, se = run_cli(["run", str(kit["s0"]), *args], capsys)
        assert rc == 0, so + se
        st = os.statvfs(disk)
        free = st.f_bavail * st.f_frsize
        (disk / "filler").write_bytes(b"\0" * max(0, free - 16 * 1024))
        rc, so, se = run_cli(["run", str(kit["s0"]), str(kit["s1"]), str(kit["s2"]), *args], capsys)
        assert rc == 1, so + se
        assert_one_line_errors(so + se)
        fails = [ln for ln in so.splitlines() if ln.startswith("✗ ")]
        assert len(fails) == 2 and all("disk has space" in ln for ln in fails), so
        assert "0 done, 1 skipped, 2 failed" in so
        assert assert_no_partial(out, ["s0", "s1", "s2"], leftovers_ok=False) == ["s0"]
        # space again: the rerun finishes the rest
        (disk / "filler").unlink()
        rc, so, se = run_cli(["run", str(kit["s1"]), *args], capsys)
        assert rc == 0 and "1 done" in so


# --------------------------------------------------------------------------- nothing lost


def _dot_tmp(out: Path, stem: str) -> bool:
    return out.is_dir() and any(out.glob(f".{stem}.tmp-*"))


# (signal, when): when the first slide's final folder appears (mid second slide), while the
# first slide's outputs are being written (its temporary folder exists), and mid second slide.
SCENARIOS = [
    ("SIGINT", "first-done"),
    ("SIGTERM", "first-writing"),
    ("SIGKILL", "second-writing"),
]


@pytest.mark.parametrize(("signame", "when"), SCENARIOS)
def test_interrupted_run_loses_nothing_and_rerun_finishes(
    tmp_path: Path,
    kit: dict[str, Path],
    signame: str,
    when: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = ["s0", "s1", "s2"]
    out = tmp_path / "out"
    proc = spawn(
        [
            "run",
            *slides(kit, 3),
            "--out",
            str(out),
            "--model",
            str(kit["model"]),
            "-q",
            "--workers",
            "0",
        ]
    )
    try:
        if when == "first-done":
            wait_for(lambda: (out / "s0").is_dir(), proc)
        elif when == "first-writing":  # (or just renamed, should polling be starved)
            wait_for(lambda: _dot_tmp(out, "s0") or (out / "s0").is_dir(), proc)
        else:
            wait_for(lambda: _dot_tmp(out, "s1") or (out / "s1").is_dir(), proc)
        proc.send_signal(getattr(signal, signame))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    expect_rc = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9}[signame]
    assert proc.returncode == expect_rc, stdout + stderr
    assert_one_line_errors(stdout + stderr)
    if signame != "SIGKILL":
        assert "finished slides are complete, rerun" in stderr
        # a clean interruption removes its own temporary folder
        done = assert_no_partial(out, names, leftovers_ok=False)
    else:
        done = assert_no_partial(out, names, leftovers_ok=True)
    if when == "first-done":
        assert "s0" in done
    elif when == "first-writing":
        assert done == [] or done == ["s0"]  # the rename may have won the race
    else:
        assert "s0" in done and "s2" not in done
    assert len(done) < 3
    finished_before = {n: (out / n / "summary.json").read_bytes() for n in done}

    rc, so, se = run_cli(
        [
            "run",
            *slides(kit, 3),
            "--out",
            str(out),
            "--model",
            str(kit["model"]),
            "-q",
            "--workers",
            "0",
        ],
        capsys,
    )
    assert rc == 0, so + se
    assert marks(so, "✓") == 3 - len(done) and marks(so, "-") == len(done), so
    assert assert_no_partial(out, names, leftovers_ok=False) == names
    for n, data in finished_before.items():
        assert (out / n / "summary.json").read_bytes() == data, "a finished slide was redone"


def test_overwrite_killed_between_renames_keeps_the_old_output(
    tmp_path: Path, kit: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--overwrite`` moves the finished folder to ``.<stem>.old-*`` before renaming the new one
    in; a run killed between the two renames must not lose the slide: the next run puts the old
    output back (and skips the slide)."""
    out = tmp_path / "out"
    args = ["--out", str(out), "--model", str(kit["model"]), "-q", "--workers", "0"]
    assert run_cli(["run", str(kit["s0"]), *args], capsys)[0] == 0
    before = (out / "s0" / "summary.json").read_bytes()
    (out / "s0").rename(out / ".s0.old-999-deadbeef")  # the state a kill -9 leaves
    (out / ".s0.tmp-999-cafef00d").mkdir()  # with the new output unfinished
    rc, so, _ = run_cli(["run", str(kit["s0"]), *args], capsys)
    assert rc == 0 and "1 skipped" in so
    assert (out / "s0" / "summary.json").read_bytes() == before
    assert assert_no_partial(out, ["s0"], leftovers_ok=False) == ["s0"]


def test_two_runs_on_one_folder_do_each_slide_once(tmp_path: Path, kit: dict[str, Path]) -> None:
    out = tmp_path / "out"
    args = [
        "run",
        *slides(kit, 4),
        "--out",
        str(out),
        "--model",
        str(kit["model"]),
        "-q",
        "--workers",
        "0",
    ]
    procs = [spawn(args), spawn(args)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (so, se) in zip(procs, results, strict=True):
        assert p.returncode == 0, so + se
        assert_one_line_errors(so + se)
    ticks = sum(marks(so, "✓") for so, _ in results)
    skips = sum(marks(so, "-") for so, _ in results)
    assert ticks == 4 and skips == 4, results
    names = ["s0", "s1", "s2", "s3"]
    assert assert_no_partial(out, names, leftovers_ok=False) == names
    for n in names:  # each written by the run that reported it done
        (who,) = [i for i, (so, _) in enumerate(results) if f"✓ {kit[n]}" in so]
        assert f"- {kit[n]}" in results[1 - who][0]
