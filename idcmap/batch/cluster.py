"""Scale out on Dask distributed: one task per slide, the model loaded once per worker.

:func:`segment_slides` runs :func:`idcmap.batch.runner.process_slide` — the same per-slide unit as a
local batch — either in this process (``client=None``) or as one Dask task per slide. A worker
writes the slide's folder straight into ``out_dir`` (a file system every worker sees) with the
local rules: per-slide ``flock``, leftovers of killed runs removed, finished slides skipped,
outputs renamed into place only when complete. The client receives only the small
:class:`~idcmap.batch.runner.Outcome`.

* **Model**: a task carries a :class:`ModelRef` (the config path and the weights' sha256), never
  the network. The :class:`ModelCache` worker plugin loads the model on the worker's first task
  and keeps it for the others, keyed by sha256 and device.
* **GPU**: when the device is CUDA (``device='cuda'``, or ``'auto'`` on a cluster whose workers
  declare a ``GPU`` resource), each task asks for ``resources={"GPU": 1}``: start GPU workers with
  ``--resources GPU=1`` (one worker per GPU; :func:`local_cluster` does it on one machine).
* **Threads**: torch's threads follow ``params.torch_threads`` or, when it is None, the
  worker's ``nthreads``, set for each task and restored after it.
* **Faults**: a slide's own failure (bad file, no µm/px) is a ``failed`` Outcome, reported once
  and never retried. A worker that dies mid-slide (SIGKILL, out of memory, node lost) makes the
  scheduler run the slide again on another worker (up to ``distributed.scheduler.
  allowed-failures`` deaths, 3 by default); the lock and the atomic rename leave no partial
  folder, and a slide finished just before the death comes back ``skipped``. An exception
  outside the slide (the model file missing on one worker) is retried ``retries`` times.
* **Resume**: an interrupted client leaves finished slides complete; a rerun skips them. Two
  clients on one ``out_dir`` share the work through the locks: each slide is done once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idcmap.batch.runner import (
    FAILED,
    Outcome,
    RunOptions,
    check_output_dir,
    plan,
    process_slide,
    run_slides,
    slide_bar,
)
from idcmap.errors import IDCMapError, ModelError, UsageError
from idcmap.io.urls import slide_stem
from idcmap.params import Params

try:  # an optional dependency: idcmap[distributed]
    from distributed.diagnostics.plugin import WorkerPlugin as _PluginBase
except ImportError:  # pragma: no cover - the module still imports; using a client needs it
    _PluginBase = object  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from distributed import Client

    from idcmap.model.runtime import IDCModel

__all__ = [
    "PLUGIN_NAME",
    "ModelCache",
    "ModelRef",
    "connect",
    "dashboard_link",
    "local_cluster",
    "model_ref",
    "plugin_name",
    "segment_slides",
    "visible_gpus",
]

#: Name of the :class:`ModelCache` plugin on the workers.
PLUGIN_NAME = "idcmap-model-cache"

_INSTALL = "pip install 'idcmap[distributed]'"


def _need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise UsageError(f"running on a Dask cluster needs dask.distributed: {_INSTALL}") from e


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to find the model on a worker: small, picklable, no weights.

    Attributes:
        config_path: the model's ``.json`` as the workers see it; None for the model bundled
            with idcmap (each worker takes its own installed copy).
        sha256: sha256 of the weights file; the worker checks its copy against it.
        device: the device asked for (``auto`` is resolved on the worker).
    """

    config_path: str | None
    sha256: str
    device: str


def model_ref(model: IDCModel | str | os.PathLike[str] | None, device: str = "auto") -> ModelRef:
    """A :class:`ModelRef` for a loaded model, a model path, or None (the bundled model).

    Reads only the model's JSON config here: the weights stay on disk, for the workers.

    Raises:
        ModelError: no config, or a model that was never saved to a file.
    """
    from idcmap.model.modelfile import bundled_model_path, find_config, read_config
    from idcmap.model.runtime import IDCModel

    if isinstance(model, IDCModel):
        if model.path is None:
            raise ModelError(
                "this model was never saved to a file and cannot be sent to workers; save it "
                "with idcmap.model.modelfile.save_model() and pass its .json path as model="
            )
        path: Path | None = Path(model.path)
    else:
        path = None if model is None else find_config(Path(model))
    bundled = bundled_model_path()
    if path is not None and path.resolve() == bundled.resolve():
        path = None
    sha = read_config(path or bundled).weights_sha256
    if isinstance(model, IDCModel) and model.sha256:
        sha = model.sha256
    return ModelRef(None if path is None else str(path.resolve()), sha, device)


class ModelCache(_PluginBase):
    """Worker plugin: the worker's models, loaded on first use and kept (keyed by sha256 and
    device); it also knows the worker's ``nthreads`` (torch's threads when the task's params
    leave them to the worker).

    Registered by :func:`segment_slides` under :func:`plugin_name` (idempotent: a later batch
    on the same cluster keeps the loaded models); workers that join later (``adapt``) get it too.
    """

    idempotent = True

    def __init__(self) -> None:
        self._models: dict[tuple[str | None, str, str], IDCModel] = {}
        self._lock = threading.Lock()
        self._nthreads = 1
        self.loads = 0  # how many times a model was loaded (the tests check it is once)

    def setup(self, worker: Any) -> None:
        self._nthreads = int(getattr(getattr(worker, "state", None), "nthreads", 1) or 1)

    def teardown(self, worker: Any) -> None:
        self._models.clear()

    def get(self, ref: ModelRef) -> IDCModel:
        key = (ref.config_path, ref.sha256, ref.device)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = _load(ref)
                self._models[key] = model
                self.loads += 1
            return model

    def threads(self) -> int:
        return max(1, self._nthreads)

    def __getstate__(self) -> dict[str, Any]:  # sent to the workers: no models, no lock
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def plugin_name() -> str:
    """The :class:`ModelCache`'s name on the workers."""
    return PLUGIN_NAME


def _load(ref: ModelRef) -> IDCModel:
    from idcmap.model.runtime import load_model

    model = load_model(ref.config_path, device=ref.device)
    if ref.sha256 and model.sha256 != ref.sha256:
        where = ref.config_path or "the bundled model"
        raise ModelError(
            f"{where} on this worker has weights {model.sha256[:12]}…, the client's have "
            f"{ref.sha256[:12]}…: install the same idcmap / model file on every worker"
        )
    return model


def _slide_task(
    path: str,
    out_dir: str,
    ref: ModelRef,
    params: Params,
    options: RunOptions,
    plugin: str = PLUGIN_NAME,
) -> Outcome:
    """One slide on a worker (a module-level function: pickled by name, not by value)."""
    from distributed import get_worker

    from idcmap.model.runtime import torch_threads as use_torch_threads

    found = get_worker().plugins.get(plugin)
    cache = found if isinstance(found, ModelCache) else ModelCache()
    model = cache.get(ref)  # a ModelError raises: retried on another worker, then reported
    # params.torch_threads, if given, is applied by the pipeline itself around the model
    with use_torch_threads(None if params.torch_threads else cache.threads()):
        # another client holds it: wait, then skip (done) or take over
        return process_slide(path, out_dir, model=model, params=params, options=options)


# --------------------------------------------------------------------------- batches


def segment_slides(
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    client: Client | None = None,
    model: IDCModel | str | os.PathLike[str] | None = None,
    params: Params | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tiles_geojson: bool = False,
    extra_outputs: Iterable[str] = (),
    retries: int = 2,
    debug: bool = False,
) -> Iterator[Outcome]:
    """Segment many slides into ``out_dir``; yields one :class:`~idcmap.batch.runner.Outcome` per
    input as it finishes (in completion order; ``Outcome.path`` says which).

    Args:
        paths: slide files or ``http(s)://``, ``s3://``, ``gs://`` URLs (read with tiffslide).
            With a ``client``, the paths must be valid on the workers.
        out_dir: output folder; ``out_dir/<stem>/`` per slide. With a ``client``, a folder
            every worker sees (a shared file system).
        client: a ``distributed.Client``: one task per slide on its cluster; None: this process.
        model: a loaded model (saved to a file), a model ``.json`` path, or None (bundled).
        params: pipeline parameters (:class:`~idcmap.pipeline.segment.Params`); with a ``client``,
            ``torch_threads=None`` means each worker's ``nthreads``.
        overwrite: redo slides whose outputs exist (else they come back ``skipped``).
        progress: a bar over the slides.
        tiles_geojson: also write ``<stem>.tiles.geojson`` (same as
            ``extra_outputs={"tiles_geojson"}``).
        extra_outputs: opt-in outputs to write too (:data:`idcmap.output.folder.OUTPUT_OPTIONS`:
            ``tiles_geojson``, ``ome_tiff``).
        retries: reruns of a task that raised outside its slide (e.g. the model file missing
            on a worker); a slide's own failures are never retried.
        debug: every failure's traceback in ``Outcome.detail``.

    Raises:
        UsageError, ModelError, OutputError: before any slide, for the whole batch.
    """
    p = params or Params()
    p.validate()
    extra = frozenset(extra_outputs) | frozenset({"tiles_geojson"} if tiles_geojson else ())
    options = RunOptions(overwrite=overwrite, extra_outputs=extra, progress=progress, debug=debug)
    if client is None:
        from idcmap.model.runtime import IDCModel, load_model

        net = (
            model
            if isinstance(model, IDCModel)
            else load_model(None if model is None else Path(model), device=p.device)
        )
        _check_stride(p, net.config.patch_px)
        yield from run_slides(paths, out_dir, model=net, params=p, options=options)
        return
    out = Path(out_dir)
    # finished slides are seen here only when this process sees out_dir; else the workers
    # skip them (a finished folder is final: no lock is needed to see it)
    from idcmap.model.modelfile import bundled_model_path, read_config

    cfg = read_config(model_ref(model, p.device).config_path or bundled_model_path())
    early, queue = plan(paths, out, overwrite=overwrite, see_out_dir=True, against=(cfg, p))
    bar = slide_bar(len(early) + len(queue), progress)
    try:
        for o in early:
            bar.update(1)
            yield o
        yield from _on_cluster(
            client, queue, out, model, p, replace(options, progress=False), retries, bar
        )
    finally:
        bar.close()


def _check_stride(params: Params, patch_px: int) -> None:
    if params.stride_px is not None:
        from idcmap.pipeline.tiles import check_stride

        check_stride(params.stride_px, patch_px)


def _on_cluster(
    client: Client,
    queue: list[str],
    out: Path,
    model: IDCModel | str | os.PathLike[str] | None,
    params: Params,
    options: RunOptions,
    retries: int,
    bar: Any,
) -> Iterator[Outcome]:
    _need_distributed()
    from distributed import as_completed

    if not queue:
        return
    from idcmap.model.modelfile import bundled_model_path, read_config

    ref = model_ref(model, params.device)
    _check_stride(params, read_config(ref.config_path or bundled_model_path()).patch_px)
    # the output folder as the workers see it (this process may not see it at all)
    client.submit(
        check_output_dir, out, pure=False, key=f"idcmap-check-out-{uuid.uuid4().hex}"
    ).result()
    name = plugin_name()
    client.register_plugin(ModelCache(), name=name)
    resources = _resources(client, params.device)
    token = uuid.uuid4().hex[:8]
    futures = {}
    for s in queue:
        fut = client.submit(
            _slide_task,
            s,
            str(out),
            ref,
            params,
            options,
            name,
            key=f"idcmap-slide-{slide_stem(s)}-{token}",
            pure=False,
            retries=retries,
            resources=resources,
        )
        futures[fut.key] = (fut, s)
    pending = set(futures)
    try:
        for fut in as_completed([f for f, _ in futures.values()]):
            pending.discard(fut.key)
            o = _result(fut, futures[fut.key][1])
            fut.release()
            bar.update(1)
            yield o
    finally:
        if pending:  # interrupted: drop what has not started; running slides finish atomically
            with contextlib.suppress(Exception):
                client.cancel([futures[k][0] for k in pending])


def _result(fut: Any, path: str) -> Outcome:
    from distributed import KilledWorker

    try:
        o = fut.result()
    except KilledWorker as e:
        return Outcome(
            path,
            FAILED,
            "the workers running it died every time (killed, out of memory?): "
            f"{' '.join(str(e).split())[:200]}; see the worker logs, give workers more memory "
            "or lower batch_size",
        )
    except IDCMapError as e:
        return Outcome(path, FAILED, " ".join(str(e).split()))
    except BaseException as e:  # a task error from the worker (CancelledError included)
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        return Outcome(path, FAILED, f"task error on the cluster {type(e).__name__}: {e}")
    if not isinstance(o, Outcome):  # an Outcome class of another idcmap version
        return Outcome(path, getattr(o, "status", FAILED), getattr(o, "message", repr(o)))
    return o


def _resources(client: Client, device: str) -> dict[str, float] | None:
    """``{"GPU": 1}`` for CUDA work; refuses at once when no worker could ever run it."""
    info = client.scheduler_info()
    workers = info.get("workers", {}) if isinstance(info, dict) else {}
    gpu_workers = [w for w in workers.values() if (w.get("resources") or {}).get("GPU", 0) >= 1]
    d = device.lower()
    if d.startswith("cuda"):
        if workers and not gpu_workers:
            raise UsageError(
                f"device={device!r} makes each task ask for one GPU, but none of the "
                f"{len(workers)} workers declares one: start GPU workers with "
                "'dask worker ... --resources GPU=1' (one per GPU), or use device='cpu'"
            )
        return {"GPU": 1}
    if d == "auto" and gpu_workers:
        return {"GPU": 1}
    return None


# --------------------------------------------------------------------------- clusters


def visible_gpus() -> list[str]:
    """IDs of the CUDA GPUs this process may use (``CUDA_VISIBLE_DEVICES`` order)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        n = 0
    if env is not None and env.strip() != "":
        ids = [x.strip() for x in env.split(",") if x.strip() and x.strip() != "-1"]
        return ids[:n]
    return [str(i) for i in range(n)]


def local_cluster(
    n_workers: int | None = None,
    *,
    gpus: bool | None = None,
    dashboard_address: str | None = ":8787",
    host: str = "127.0.0.1",
) -> Any:
    """A cluster of worker processes on this machine.

    With CUDA GPUs (``gpus=None``: when any is visible): one worker per GPU, each seeing only
    its GPU (``CUDA_VISIBLE_DEVICES``) and declaring ``resources={"GPU": 1}``. Without: one
    single-threaded worker per core (``n_workers`` overrides). Close it when done.
    """
    _need_distributed()
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    ids = visible_gpus() if gpus is None or gpus else []
    if gpus and not ids:
        raise UsageError("a GPU cluster was asked for but no CUDA GPU is visible")
    if ids:
        ids = ids[: n_workers or len(ids)]
        workers = {
            f"gpu-{gid}": {
                "cls": Nanny,
                "options": {
                    "nthreads": 1,
                    "resources": {"GPU": 1},
                    "env": {"CUDA_VISIBLE_DEVICES": gid},
                    "host": host,
                },
            }
            for gid in ids
        }
        scheduler = {
            "cls": Scheduler,
            "options": {"host": host, "dashboard_address": dashboard_address},
        }
        return SpecCluster(
            scheduler=scheduler, workers=workers, name="idcmap-gpus", silence_logs=logging.ERROR
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return LocalCluster(
        n_workers=n_workers or max(1, cores or 1),
        threads_per_worker=1,
        processes=True,
        host=host,
        dashboard_address=dashboard_address,
        silence_logs=logging.ERROR,  # not the nanny's "still alive after 4 s" at close
    )


def connect(address: str, *, timeout_s: float = 10.0) -> tuple[Client, Any]:
    """A client for ``address``: ``tcp://host:port``, a scheduler file (JSON written by
    ``dask scheduler --scheduler-file``), or ``local`` / ``local:N`` (start
    :func:`local_cluster`). Returns ``(client, cluster)``; ``cluster`` is None unless started
    here; close both when done.

    Raises:
        UsageError: the scheduler cannot be reached (one line).
    """
    _need_distributed()
    from distributed import Client

    cluster = None
    a = address.strip()
    try:
        if a == "local" or a.startswith("local:"):
            n = None
            if a.startswith("local:"):
                try:
                    n = int(a.split(":", 1)[1])
                except ValueError:
                    n = 0
                if n <= 0:
                    raise UsageError(f"scheduler 'local:N' needs N ≥ 1 workers, got {a!r}")
            cluster = local_cluster(n)
            return Client(cluster), cluster
        if "://" not in a and (a.endswith(".json") or Path(a).is_file()):
            if not Path(a).is_file():
                raise UsageError(
                    f"scheduler file {a} not found; start the scheduler with "
                    f"'dask scheduler --scheduler-file {a}' or pass its tcp:// address"
                )
            return Client(scheduler_file=a, timeout=timeout_s), None
        if "://" not in a:
            a = f"tcp://{a}"
        return Client(a, timeout=timeout_s), None
    except IDCMapError:
        if cluster is not None:
            cluster.close()
        raise
    except (OSError, TimeoutError, ValueError) as e:
        if cluster is not None:
            cluster.close()
        raise UsageError(
            f"cannot reach the Dask scheduler at {address} ({' '.join(str(e).split())}); start "
            "it ('dask scheduler') or check the address"
        ) from e


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL of the client's scheduler, None when it has none."""
    try:
        link = client.dashboard_link
    except Exception:
        return None
    return str(link) if link else None
