"""Batch inputs: slide lists and recursive folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from idcmap.batch.inputs import expand_inputs, read_slide_list
from idcmap.errors import UsageError


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_read_slide_list(tmp_path: Path) -> None:
    a = touch(tmp_path / "slides" / "a.svs")
    lst = tmp_path / "lists" / "batch.txt"
    lst.parent.mkdir()
    lst.write_text(
        "\ufeff# cohort 1\n"
        "\n"
        f"{a}\n"
        "  ../slides/b.tiff   # relative to the list's folder\n"
        "case#3.svs\n"
        "   # indented comment\n"
    )
    assert read_slide_list(lst) == [
        a,
        tmp_path / "lists" / "../slides/b.tiff",
        tmp_path / "lists" / "case#3.svs",
    ]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("# only comments\n\n", "names no slide"),
        (b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_read_slide_list_errors(tmp_path: Path, content: str | bytes | None, match: str) -> None:
    lst = tmp_path / "l.txt"
    if isinstance(content, str):
        lst.write_text(content)
    elif isinstance(content, bytes):
        lst.write_bytes(content)
    with pytest.raises(UsageError, match=match):
        read_slide_list(lst)
    with pytest.raises(UsageError, match="folder"):
        read_slide_list(tmp_path)


def test_expand_recursive(tmp_path: Path) -> None:
    top = touch(tmp_path / "in" / "z.svs")
    deep = touch(tmp_path / "in" / "site1" / "case2" / "b.ndpi")
    touch(tmp_path / "in" / "site1" / "notes.txt")
    touch(tmp_path / "in" / ".hidden" / "h.svs")
    dcm = tmp_path / "in" / "site2" / "series"
    touch(dcm / "1.dcm")
    touch(dcm / "2.dcm")
    # an idcmap output folder inside the input folder is not input
    out = tmp_path / "in" / "out" / "z"
    touch(out / "heatmap.png")
    touch(out / "summary.json")
    flat = expand_inputs([tmp_path / "in"])
    assert flat == [top]
    deep_list = expand_inputs([tmp_path / "in"], recursive=True)
    assert deep_list == [top, deep, dcm]
    # each slide once, even when given twice; a folder without slides stays, to fail visibly
    empty = tmp_path / "empty"
    empty.mkdir()
    assert expand_inputs([top, str(top), empty], recursive=True) == [top, empty]


def test_a_broken_link_in_a_folder_fails_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link named like a slide whose target is gone (an unmounted share, a moved cohort) is
    not skipped silently: it stays an input, and the run says what it is; links to other files
    and folders are not inputs."""
    from idcmap.cli.main import main

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "gone.svs").symlink_to(tmp_path / "share" / "gone.svs")
    (folder / "notes.txt").symlink_to(tmp_path / "share" / "notes.txt")
    assert expand_inputs([folder]) == [folder / "gone.svs"]
    assert expand_inputs([folder], recursive=True) == [folder / "gone.svs"]
    rc = main(["run", str(folder), "--out", str(tmp_path / "o"), "-q"])
    out = capsys.readouterr().out
    assert rc == 1
    (line,) = [ln for ln in out.splitlines() if ln.startswith("✗ ")]
    assert "gone.svs: a broken link (to " in line and "share/gone.svs); check the link" in line


def test_slide_suffixes_are_matched_whatever_their_case(tmp_path: Path) -> None:
    """Scanners and Windows shares write ``A.SVS``, ``b.Tiff``, ``C.NDPI``; a DICOM series of
    ``.DCM`` files is still one input."""
    upper = touch(tmp_path / "in" / "A.SVS")
    mixed = touch(tmp_path / "in" / "b.Tiff")
    lower = touch(tmp_path / "in" / "c.svs")
    deep = touch(tmp_path / "in" / "site" / "C.NDPI")
    touch(tmp_path / "in" / "README.TXT")
    dcm = tmp_path / "in" / "series"
    touch(dcm / "1.DCM")
    touch(dcm / "2.Dcm")
    assert expand_inputs([tmp_path / "in"]) == [upper, mixed, lower]
    assert expand_inputs([tmp_path / "in"], recursive=True) == [upper, mixed, lower, dcm, deep]
    assert expand_inputs([dcm]) == [dcm]
