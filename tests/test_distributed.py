"""Dask runs on a real LocalCluster (2 worker processes on 127.0.0.1) over real shared slides.

One cluster serves the module (starting one costs ~5 s on 2 cores); the test that SIGKILLs a
worker runs last, and the nanny restarts the worker it killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason="needs idcmap[distributed] (dask)")
aiohttp = pytest.importorskip("aiohttp", reason="needs aiohttp for http:// slides (fsspec)")

from http_range import serve  # noqa: E402

from idcmap.batch.cluster import (  # noqa: E402
    PLUGIN_NAME,
    connect,
    model_ref,
    segment_slides,
)
from idcmap.batch.runner import Outcome  # noqa: E402
from idcmap.errors import UsageError  # noqa: E402
from idcmap.params import Params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: small IDC mosaics (0.4–1 s each on this machine)
SMALL = ("9035", "14306", "14082", "8955")
#: the measurements that must not depend on where a slide ran
FIGURES = ("tissue_area_mm2", "idc_area_mm2", "idc_fraction_of_tissue", "regions", "tiles")


@pytest.fixture(scope="module")
def slides(shared: Path) -> list[str]:
    paths = [shared / "idc" / "slides" / f"{s}.tiff" for s in SMALL]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared IDC mosaics missing: {missing}")
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def serial(slides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same slides run in this process (client=None)."""
    out = tmp_path_factory.mktemp("serial")
    got = list(segment_slides(slides[:3], out, progress=False))
    assert [o.status for o in got] == ["done"] * 3, [o.message for o in got]
    return out


def _stem(path: str) -> str:
    return Path(path.split("?")[0]).stem


def _same_result(a: Path, b: Path, stem: str, *, source: bool = True) -> None:
    """Same regions (GeoJSON geometry and properties) and the same summary figures."""
    ga, gb = (_features(d / stem / f"{stem}.geojson") for d in (a, b))
    assert len(ga) == len(gb) > 0
    for fa, fb in zip(ga, gb, strict=True):
        # the network's sums differ in their last bits with the worker's torch threads
        # (1 per Dask worker here, all cores in this process): measurements to 1e-6
        ma, mb = (f["properties"].pop("measurements", {}) for f in (fa, fb))
        assert fa == fb
        assert ma.keys() == mb.keys() and all(
            ma[k] == pytest.approx(mb[k], rel=1e-6) for k in ma
        ), (ma, mb)
    sa = json.loads((a / stem / "summary.json").read_text())
    sb = json.loads((b / stem / "summary.json").read_text())
    for k in FIGURES:
        assert sa[k] == sb[k], k
    assert sa["slide"]["level_dimensions"] == sb["slide"]["level_dimensions"]


def _features(path: Path) -> list[dict[str, Any]]:
    """Features without their ids (random UUIDs, as QuPath makes them)."""
    return [
        {k: v for k, v in f.items() if k != "id"} for f in json.loads(path.read_text())["features"]
    ]


def _no_leftovers(out: Path) -> None:
    left = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert left == [], left


def test_cluster_matches_serial(client: Any, slides: list[str], serial: Path, tmp_path: Path):
    out = tmp_path / "dask"
    got = list(segment_slides(slides[:3], out, client=client, progress=False))
    assert sorted(o.path for o in got) == sorted(slides[:3])
    assert all(isinstance(o, Outcome) and o.status == "done" for o in got), got
    for s in slides[:3]:
        _same_result(serial, out, _stem(s))
    _no_leftovers(out)

    # the model crossed the network as a path and a sha256, and loaded once per worker
    def loads(dask_worker: Any) -> int:
        return dask_worker.plugins[PLUGIN_NAME].loads

    before = client.run(loads)
    assert all(n <= 1 for n in before.values()) and sum(before.values()) >= 1, before
    # a rerun skips everything (seen by the client: no task at all)
    again = list(segment_slides(slides[:3], out, client=client, progress=False))
    assert [o.status for o in again] == ["skipped"] * 3
    # ... unless asked for other outputs: then each says so, and nothing is redone
    other = Params(qc="none")
    diff = list(segment_slides(slides[:3], out, client=client, params=other, progress=False))
    assert [o.status for o in diff] == ["failed"] * 3
    assert all("done with other settings (qc=all, not none)" in o.message for o in diff), diff
    # a new batch on the same cluster keeps the workers' models (the plugin is idempotent)
    more = list(segment_slides(slides[:3], out, client=client, progress=False, overwrite=True))
    assert [o.status for o in more] == ["done"] * 3
    assert (
        client.run(loads) == {w: max(n, 1) for w, n in before.items()}
        or client.run(loads) == before
    )


def test_model_ref_carries_no_weights():
    ref = model_ref(None)
    assert ref.config_path is None and len(ref.sha256) == 64  # the bundled model, by hash


def test_bad_file_one_line_nonzero_exit(
    client: Any, slides: list[str], shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    from idcmap.cli.main import main

    bad = shared / "wsi" / "negative" / "broken.svs"
    addr = client.scheduler.address
    rc = main(["run", slides[0], str(bad), "--out", str(tmp_path), "--scheduler", addr, "-q"])
    out = capsys.readouterr().out
    assert rc == 1
    failed = [line for line in out.splitlines() if line.startswith("✗")]
    assert len(failed) == 1 and "broken.svs" in failed[0], out
    assert "Traceback" not in out
    assert (tmp_path / _stem(slides[0]) / "summary.json").is_file()
    assert "1 done, 0 skipped, 1 failed" in out
    assert f"Dask scheduler {addr}, 2 workers" in out


def test_interrupted_client_resumes(client: Any, slides: list[str], tmp_path: Path):
    gen = segment_slides(slides[:3], tmp_path, client=client, progress=False)
    first = next(gen)
    gen.close()  # the client walks away: pending slides are cancelled
    assert first.status == "done"
    time.sleep(0.5)
    rerun = list(segment_slides(slides[:3], tmp_path, client=client, progress=False))
    by = {_stem(o.path): o.status for o in rerun}
    assert by[_stem(first.path)] == "skipped"
    assert set(by.values()) <= {"done", "skipped"} and len(by) == 3
    _no_leftovers(tmp_path)


def test_two_clients_one_out_dir(client: Any, slides: list[str], tmp_path: Path):
    from distributed import Client

    results: dict[str, list[Outcome]] = {}

    def run(name: str) -> None:
        with Client(client.scheduler.address) as c:
            results[name] = list(segment_slides(slides[:3], tmp_path, client=c, progress=False))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done = Counter(_stem(o.path) for r in results.values() for o in r if o.status == "done")
    every = [o for r in results.values() for o in r]
    assert len(every) == 6 and all(o.status in ("done", "skipped") for o in every), every
    assert done == Counter({_stem(s): 1 for s in slides[:3]})  # each slide exactly once
    _no_leftovers(tmp_path)


def test_remote_http_slides(
    client: Any, slides: list[str], serial: Path, shared: Path, tmp_path: Path
):
    root = Path(slides[0]).parent
    with serve(root) as srv:
        urls = [f"{srv.url}/{Path(s).name}" for s in slides[:2]]
        missing = f"{srv.url}/no-such-slide.tiff"
        refused = "http://127.0.0.1:9/refused.tiff"  # port 9 (discard): nothing listens
        local = {o.path: o for o in segment_slides([urls[0], missing, refused], tmp_path / "a")}
        on_cluster = list(segment_slides([urls[1]], tmp_path / "b", client=client, progress=False))
        assert srv.bytes_sent[Path(slides[1]).name] > 0  # the worker read over HTTP
    assert local[urls[0]].status == "done"
    _same_result(serial, tmp_path / "a", _stem(slides[0]))
    assert on_cluster[0].status == "done"
    _same_result(serial, tmp_path / "b", _stem(slides[1]))
    for url, words in ((missing, "not found"), (refused, "cannot be reached")):
        o = local[url]
        assert o.status == "failed" and words in o.message, o
        assert "\n" not in o.message and "Traceback" not in o.message
    assert not (tmp_path / "a" / "no-such-slide").exists()


def test_connect_errors_one_line(tmp_path: Path):
    with pytest.raises(UsageError, match=r"scheduler file .* not found"):
        connect(str(tmp_path / "scheduler.json"))
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"):
        connect("tcp://127.0.0.1:9", timeout_s=1)


def test_cuda_needs_gpu_workers(client: Any, slides: list[str], tmp_path: Path):
    with pytest.raises(UsageError, match="GPU=1"):
        list(segment_slides(slides[:1], tmp_path, client=client, params=Params(device="cuda")))


def test_gpu_workers_get_the_slides(client: Any, slides: list[str], tmp_path: Path):
    """device='auto' on a cluster where one worker declares GPU=1: every slide task asks for it
    and runs there (the worker has no GPU: 'auto' then computes on its CPU)."""
    from distributed import get_task_stream

    async def declare(dask_worker: Any, n: float) -> None:
        await dask_worker.set_resources(GPU=n)

    gpu = sorted(client.scheduler_info()["workers"])[0]
    client.run(declare, n=1, workers=[gpu])
    try:
        with get_task_stream(client) as ts:
            got = list(segment_slides(slides[:2], tmp_path, client=client, progress=False))
        assert [o.status for o in got] == ["done", "done"]
        ran = {t["worker"] for t in ts.data if str(t["key"]).startswith("idcmap-slide-")}
        assert ran == {gpu}, ran
    finally:
        client.run(declare, n=0, workers=[gpu])


def test_example_script_local_cluster(slides: list[str], tmp_path: Path):
    """examples/dask_cluster.py as a user runs it: it starts its own local cluster."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "dask_cluster.py"),
            slides[3],
            "--out",
            str(tmp_path),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 workers" in r.stdout and "done" in r.stdout, r.stdout
    assert (tmp_path / _stem(slides[3]) / "summary.json").is_file()


def test_worker_killed_mid_slide(client: Any, slides: list[str], tmp_path: Path):
    """SIGKILL the worker holding a slide's lock: the batch completes, every slide once."""
    pids = client.run(os.getpid)
    killed: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            locks = {p.name[1:-5] for p in tmp_path.glob(".*.lock")}
            for addr, keys in client.processing().items():
                for key in keys:
                    stem = str(key).removeprefix("idcmap-slide-").rsplit("-", 1)[0]
                    if stem in locks:
                        os.kill(pids[addr], signal.SIGKILL)
                        killed.append(stem)
                        return
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    got = list(segment_slides(slides, tmp_path, client=client, progress=False))
    t.join()
    assert killed, "no slide was seen in progress"
    assert sorted(o.path for o in got) == sorted(slides)
    assert all(o.status in ("done", "skipped") for o in got), got
    for s in slides:
        assert (tmp_path / _stem(s) / "summary.json").is_file()
    _no_leftovers(tmp_path)  # no partial folder, no lock file
    survivors = client.run(os.getpid)
    assert pids != survivors  # the nanny replaced the killed worker


def test_url_names_and_missing_fsspec_backend():
    import importlib.util

    from idcmap.errors import SlideError
    from idcmap.io.open import open_slide
    from idcmap.io.urls import slide_stem

    assert slide_stem("https://h.org/c/TCGA-A1.svs?X-Amz-Signature=ab%2Fc") == "TCGA-A1"
    assert slide_stem("s3://bucket/dir/a%20b.ome.tiff") == "a b"
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed: the missing-backend message cannot be shown")
    with pytest.raises(SlideError, match=r"needs the s3fs package"):
        open_slide("s3://bucket/a.svs")


def test_info_on_a_url(slides: list[str], capsys: pytest.CaptureFixture[str]):
    """`idcmap info URL` opens the slide over HTTP (the URL's // survives the CLI)."""
    from idcmap.cli.main import main

    with serve(Path(slides[0]).parent) as srv:
        assert main(["info", f"{srv.url}/{Path(slides[0]).name}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "tiffslide" and info["mpp"] == pytest.approx(4.0)


def test_model_ref_sends_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Workers run elsewhere (another folder, another machine with the same mounts): a model
    named by a relative path goes to them resolved."""
    from pipeline_helpers import tiny_model_file

    (tmp_path / "models").mkdir()
    tiny_model_file(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    ref = model_ref("models/tiny.json")
    assert ref.config_path == str((tmp_path / "models" / "tiny.json").resolve())
    link = tmp_path / "linked"
    link.symlink_to(tmp_path / "models", target_is_directory=True)
    assert model_ref("linked/tiny.json").config_path == ref.config_path


def test_same_slide_twice_runs_once_and_a_name_clash_fails(tmp_path: Path):
    """segment_slides (in this process, client=None): the same file under two paths is one
    slide, run once (the second path gets its own 'skipped' outcome: one per input); another
    file with the same name fails on its own line."""
    import numpy as np
    from pipeline_helpers import colour_model
    from tiffgen import write_cell_slide

    red = np.full((4, 5), 240, np.uint8)
    slide = write_cell_slide(tmp_path / "in" / "a.tiff", red)
    other = write_cell_slide(tmp_path / "other" / "a.tiff", red[:3])
    link = tmp_path / "elsewhere" / "a.tiff"
    link.parent.mkdir()
    link.symlink_to(slide)
    got = list(
        segment_slides(
            [str(slide), str(link), str(other)],
            tmp_path / "out",
            model=colour_model(),
            progress=False,
        )
    )
    by_status = Counter(o.status for o in got)
    assert by_status == Counter({"done": 1, "skipped": 1, "failed": 1}), [
        (o.path, o.message) for o in got
    ]
    (again,) = [o for o in got if o.status == "skipped"]
    assert again.path == str(link) and "the same slide" in again.message
    (failed,) = [o for o in got if o.status == "failed"]
    assert failed.path == str(other) and "same output name 'a'" in failed.message
