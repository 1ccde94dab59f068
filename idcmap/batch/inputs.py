"""Batch inputs: slide lists (``--list slides.txt``), folders, folders searched recursively.

A list file has one slide path per line; blank lines and lines whose first non-blank character
is ``#`` are ignored, and so is the rest of a line after `` #`` (space, hash) — a ``#`` inside a
file name (``case#3.svs``) is kept. Relative paths are taken relative to the **list file's
folder**, so a list travels with its slides. A missing slide stays in the list: it fails on
its own line and the batch goes on.

Folders: the slides directly inside, or with ``recursive=True`` in every sub-folder too (sorted,
hidden files and folders skipped, a link named like a slide kept even when broken, so that it
fails on its own line, symlinked folders not followed, an idcmap output folder — one
with a ``summary.json`` — never taken as input, so ``--out`` inside the input folder is safe).
A folder whose slide files are all ``.dcm`` is one DICOM WSI series, kept as one slide.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from idcmap.errors import UsageError
from idcmap.io.open import SLIDE_SUFFIXES
from idcmap.io.urls import is_url

__all__ = ["expand_inputs", "read_slide_list", "same_slide", "slide_path"]


def read_slide_list(list_file: str | Path) -> list[str | Path]:
    """Slide paths of a list file (see the module docstring for the format); URLs
    (``https://…``, ``s3://…``) are kept as they are.

    Raises:
        UsageError: the list cannot be read, is not text, or names no slide.
    """
    lf = Path(list_file)
    try:
        text = lf.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"slide list {lf} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"slide list {lf} is a folder; give a text file of paths") from None
    except UnicodeDecodeError:
        raise UsageError(f"slide list {lf} is not UTF-8 text (one slide path per line)") from None
    except OSError as e:
        raise UsageError(f"cannot read slide list {lf}: {e.strerror or e}") from e
    base = lf.parent
    out: list[str | Path] = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        cut = s.find(" #")
        if cut >= 0:
            s = s[:cut].rstrip()
        if is_url(s):  # Path() would fold its //
            out.append(s)
            continue
        p = Path(os.path.expanduser(s))
        out.append(p if p.is_absolute() else base / p)
    if not out:
        raise UsageError(f"slide list {lf} names no slide (one path per line, # for comments)")
    return out


def _slides_in(folder: Path) -> list[Path]:
    try:
        return sorted(
            q
            for q in folder.iterdir()
            if not q.name.startswith(".")
            and q.name.lower().endswith(SLIDE_SUFFIXES)
            and (q.is_file() or q.is_symlink())  # a broken link fails on its own line
        )
    except OSError:
        return []


def _is_output_folder(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def _walk(folder: Path, out: list[Path]) -> None:
    """Depth-first, sorted: the slides of ``folder`` then those of its sub-folders."""
    if _is_output_folder(folder):
        return
    found = _slides_in(folder)
    if found and all(q.suffix.lower() == ".dcm" for q in found):
        out.append(folder)  # one DICOM series; its sub-folders are not searched
        return
    out.extend(found)
    try:
        subs = sorted(
            d
            for d in folder.iterdir()
            if not d.name.startswith(".") and d.is_dir() and not d.is_symlink()
        )
    except OSError:
        return
    for d in subs:
        _walk(d, out)


def expand_inputs(
    inputs: Iterable[str | os.PathLike[str]], *, recursive: bool = False
) -> list[str | Path]:
    """Slides from files, folders and URLs, in order, each once.

    A folder contributes the slides directly inside it (``recursive=True``: in its sub-folders
    too). A folder without slides, like a missing file, is kept as it is, so that it fails on
    its own line and the batch goes on. A URL (:func:`~idcmap.io.urls.is_url`) stays a string.
    """
    out: list[str | Path] = []
    for item in inputs:
        if is_url(item):
            out.append(item)
            continue
        p = Path(item)
        if p.is_dir():
            found: list[Path] = []
            if recursive:
                _walk(p, found)
            else:
                found = _slides_in(p)
                if found and all(q.suffix.lower() == ".dcm" for q in found):
                    found = [p]
            out.extend(found or [p])  # "a folder without slides" on its own line
        else:
            out.append(p)
    seen: set[str] = set()
    unique: list[str | Path] = []
    for s in out:
        key = s if isinstance(s, str) else os.path.abspath(s)
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def slide_path(path: str | os.PathLike[str]) -> str:
    """A slide as :attr:`~idcmap.batch.runner.Outcome.path` names it: a URL as given, a local
    path as ``Path`` spells it (``./a//b.svs`` → ``a/b.svs``)."""
    return path if is_url(path) else str(Path(path))


def same_slide(a: str, b: str) -> bool:
    """Whether two inputs are one slide (URLs as given, local paths once resolved)."""
    if is_url(a) or is_url(b):
        return a == b
    return Path(a).resolve() == Path(b).resolve()
