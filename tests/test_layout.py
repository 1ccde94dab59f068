"""The package's shape holds: no import cycle between modules (imports inside functions and
under TYPE_CHECKING count too), no module importing another's private names, no module over
600 lines, and the 0.2 module paths still importing with a DeprecationWarning."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "idcmap"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from idcmap… import name`` / ``import idcmap…`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("idcmap"):
            found += [(node.module or "", a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("idcmap")]
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for mod, name in _imports(path):
            full = f"{mod}.{name}" if name else mod
            t = full if full in MODULES else _target(mod)
            if t and t != m:
                graph[m].add(t)
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                cycles.append([*stack[stack.index(w) :], w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, " | ".join(" → ".join(c) for c in cycles)


def test_no_private_imports_across_modules() -> None:
    bad = [
        f"{m} imports {mod}.{name}"
        for m, path in MODULES.items()
        for mod, name in _imports(path)
        if name.startswith("_")
        and not name.startswith("__")
        and mod != m
        and f"{mod}.{name}" not in MODULES
    ]
    assert not bad, bad


def test_modules_stay_small() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not big, big


@pytest.mark.parametrize(
    ("old", "name"),
    [
        ("idcmap.api", "segment_slide"),
        ("idcmap.runner", "process_slide"),
        ("idcmap.distributed", "segment_slides"),
        ("idcmap.slide", "open_slide"),
        ("idcmap.remote", "open_remote_slide"),
        ("idcmap.outputs", "OUTPUTS"),
        ("idcmap.regions", "mask_to_regions"),
        ("idcmap.contours", "contour_regions"),
        ("idcmap.export", "regions_to_geojson"),
    ],
)
def test_old_paths_import_with_a_deprecation_warning(old: str, name: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in seen)
    assert callable(getattr(module, name)) or getattr(module, name) is not None


def test_public_api_from_the_top() -> None:
    import idcmap

    for name in idcmap.__all__:
        assert getattr(idcmap, name) is not None


def test_the_command_line_parser_imports_nothing_heavy() -> None:
    """``idcmap --help`` and the first line of every command start fast: building the parser
    imports no deep-learning, geometry, image-analysis or cluster library, nor the viewer's
    server (each command imports what it needs when it runs)."""
    import subprocess

    code = (
        "import sys\n"
        "from idcmap.cli.main import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'scipy', 'shapely', 'skimage', 'dask', 'fsspec', 'tifffile')\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in heavy"
        " or n.startswith('idcmap.viewer.server')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
