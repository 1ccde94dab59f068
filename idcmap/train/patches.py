"""Training of the IDC classifier with fastai (the optional extra ``idcmap[train]``).

fastai is imported inside the functions, so ``import idcmap`` works without it. The network is
any registered architecture (:data:`idcmap.model.runtime.ARCHITECTURES`; by default ``idcnet-v1``,
:class:`idcmap.model.archs.idcnet.IDCNet`); the result is written with
:func:`idcmap.model.modelfile.save_model` (safetensors + JSON), never as a pickle.

Data loading is kept cheap for a 2-core CPU: every patch is decoded once into one uint8 array and
batches are cut from it and augmented on the whole batch in torch (8 dihedral symmetries, HED
stain jitter, brightness / contrast / saturation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shlex
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from idcmap.errors import UsageError
from idcmap.model.modelfile import ModelConfig, save_model
from idcmap.model.runtime import (
    IDCModel,
    build_network,
    get_architecture,
    load_model,
    resolve_device,
    torch_threads,
)
from idcmap.train import data, distill
from idcmap.train.metrics import best_threshold, binary_metrics

# Stain matrix (rows: optical density of haematoxylin, eosin, DAB in RGB; Ruifrok & Johnston).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def dihedral(x: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Apply one of the 8 dihedral symmetries, drawn per sample, to N×C×H×W (H == W).

    ``flips`` (bool N×3: flip W, flip H, transpose) gives the symmetries instead of drawing them.
    """
    n = x.shape[0]
    if flips is None:
        flips = torch.rand(n, 3, device=x.device) < 0.5

    def pick(m: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(m.view(n, 1, 1, 1), a, b)

    x = pick(flips[:, 0], x.flip(3), x)
    x = pick(flips[:, 1], x.flip(2), x)
    return pick(flips[:, 2], x.transpose(2, 3), x)


def colour_jitter(
    x: torch.Tensor,
    hed: float = 0.05,
    hed_bias: float = 0.02,
    brightness: float = 0.08,
    contrast: float = 0.15,
    saturation: float = 0.15,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Stain and colour augmentation of float N×3×H×W in [0, 1], drawn per sample.

    HED jitter (Tellez et al. 2018): optical density → H, E, D; scale each by 1 ± ``hed`` and
    shift by ± ``hed_bias``; back to RGB. Then brightness (additive), contrast and saturation
    (multiplicative around the image mean / grey). ``generator``: draw from it (two calls with
    equally seeded generators jitter alike).
    """
    n, dev = x.shape[0], x.device

    def u(*shape: int, s: float) -> torch.Tensor:
        return (torch.rand(*shape, device=dev, generator=generator) * 2 - 1) * s

    # od' = ((od @ HED_FROM_RGB) * scale + shift) @ RGB_FROM_HED, as one 3x3 map per sample
    m, m_inv = _RGB_FROM_HED.to(dev), _HED_FROM_RGB.to(dev)
    scale, shift = 1 + u(n, 3, s=hed), u(n, 1, 3, s=hed_bias)
    a = m_inv.unsqueeze(0) * scale.unsqueeze(1) @ m  # N×3×3
    h, w = x.shape[2:]
    # optical density; the floor only guards log(0): 1e-3 < 1/255, the darkest non-zero pixel
    od = -torch.log(x.clamp_min(1e-3)).flatten(2).transpose(1, 2)  # N×HW×3
    od = torch.baddbmm(shift @ m, od, a)
    x = torch.exp(-od).transpose(1, 2).reshape(n, 3, h, w)
    x = x + u(n, 1, 1, 1, s=brightness)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + u(n, 1, 1, 1, s=contrast)) + mean
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * (1 + u(n, 1, 1, 1, s=saturation)) + grey
    return x.clamp_(0, 1)


def array_dl_class() -> type:
    """A fastai ``DataLoader`` over a uint8 N×3×H×W tensor that builds whole batches at once."""
    from fastai.data.load import DataLoader

    class ArrayDL(DataLoader):
        n_inp = 1  # (x, y) or (x, y, teacher p): one input, the rest go to the loss

        def __init__(
            self,
            x: torch.Tensor,
            y: torch.Tensor,
            augment: bool = False,
            channels_last: bool = False,
            pool: torch.Tensor | None = None,  # K×N×3×H×W degraded copies of x
            teacher: torch.nn.Module | None = None,  # frozen; batches then carry its p(IDC)
            teacher_jitter: bool = False,  # the teacher sees the student's colour jitter too
            **kw: Any,
        ) -> None:
            super().__init__(n=len(x), num_workers=0, indexed=True, **kw)
            self.x, self.y, self.augment, self.channels_last = x, y, augment, channels_last
            self.pool = pool  # each sample is drawn from x or one of its K copies, uniformly
            self.teacher, self.teacher_jitter = teacher, teacher_jitter

        def create_batches(self, samps: Any) -> Any:
            idx = torch.as_tensor(list(samps), dtype=torch.long)
            for i in range(0, len(idx), self.bs):
                b = idx[i : i + self.bs]
                if self.drop_last and len(b) < self.bs:
                    break
                b = b.to(self.x.device)
                flips = torch.rand(len(b), 3, device=b.device) < 0.5 if self.augment else None
                if self.pool is not None:
                    k = torch.randint(0, len(self.pool) + 1, (len(b),), device=b.device)
                    xb = self.x[b]
                    dk = k > 0
                    xb[dk] = self.pool[k[dk] - 1, b[dk]]
                    xb = xb.float().div_(255)
                else:
                    xb = self.x[b].float().div_(255)
                g, jitter_seed = None, 0
                if self.teacher is not None and self.teacher_jitter:  # the same draws twice
                    jitter_seed = int(torch.randint(0, 2**62, ()))
                    g = torch.Generator(xb.device).manual_seed(jitter_seed)
                if self.augment:
                    xb = colour_jitter(dihedral(xb, flips), generator=g)
                if self.channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                if self.teacher is None:
                    yield xb, self.y[b]
                    continue
                # the teacher sees the clean patch, same symmetry; jitter only if teacher_jitter
                clean = self.x[b].float().div_(255)
                if flips is not None:
                    clean = dihedral(clean, flips)
                    if g is not None:
                        g = torch.Generator(clean.device).manual_seed(jitter_seed)
                        clean = colour_jitter(clean, generator=g)
                if self.channels_last:
                    clean = clean.contiguous(memory_format=torch.channels_last)
                yield xb, self.y[b], distill.teacher_probability(self.teacher, clean)

    return ArrayDL


def degraded_copies(x: np.ndarray, degrade: Any, copies: int, seed: int) -> torch.Tensor:
    """``copies`` degraded versions of uint8 N×H×W×3 patches as one K×N×3×H×W uint8 tensor."""
    rng = np.random.default_rng(seed)
    out = np.stack(
        [
            np.concatenate([degrade(x[i : i + 1024], rng) for i in range(0, len(x), 1024)])
            for _ in range(copies)
        ]
    )
    return torch.from_numpy(out).permute(0, 1, 4, 2, 3).contiguous()


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 N×H×W×3 pixels scaled to [0, 1]."""
    s = np.zeros(3)
    s2 = np.zeros(3)
    for i in range(0, len(x), chunk):
        c = x[i : i + chunk].reshape(-1, 3).astype(np.float64) / 255
        s += c.sum(0)
        s2 += (c * c).sum(0)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    mean = s / n
    std = np.sqrt(s2 / n - mean**2)
    return [round(float(v), 5) for v in mean], [round(float(v), 5) for v in std]


def _subsample(recs: list[data.PatchRecord], n: int | None, seed: int) -> list[data.PatchRecord]:
    if n is None or len(recs) <= n:
        return recs
    idx = sorted(random.Random(seed).sample(range(len(recs)), n))
    return [recs[i] for i in idx]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    data_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    epochs: int = 20,
    seed: int = 0,
    lr: float | None = None,
    batch_size: int = 256,
    architecture: str = "idcnet-v1",
    arch_params: Mapping[str, Any] | None = None,
    mpp: float = data.DATASET_MPP,
    weight_decay: float = 0.01,
    test_frac: float = 0.15,
    valid_frac: float = 0.12,
    mosaic_test: int = 6,
    split_path: str | Path | None = None,
    max_patches: int | None = None,
    threshold_criterion: str = "f1",
    augment: bool = True,
    degrade: Any = None,
    degrade_copies: int = 3,
    init: str | Path | None = None,
    distill_from: str | Path | None = None,
    distill_weight: float = 0.9,
    distill_jitter: bool = False,
    lr_find_iters: int = 100,
    device: str = "auto",
    progress: bool = True,
    threads: int | None = None,
    command: str | None = None,
    name: str = "idcmap-idc",
    version: str = "1.0.0",
    log: Any = print,
) -> ModelConfig:
    """Train a network of ``architecture`` on patch folders in the data set's layout and write
    ``out`` (.json).

    ``arch_params`` are the architecture's keyword arguments (default: its ``default_params``;
    given ones override those); ``mpp`` is the µm per pixel of the patches, which the model
    will expect of slides (the IDC data set: 4).

    Patients are split per data folder (``mosaic_test`` test patients in folders written by
    :func:`idcmap.train.data.prepare_mosaics`, ``test_frac`` of the others; ``valid_frac``
    validation), or read from ``split_path``. The split is written to ``<out>.split.json``.
    ``max_patches`` caps the patches of each split (for quick runs). The threshold is chosen on
    the validation patients to maximise ``threshold_criterion``. Returns the config as written.

    ``degrade`` (e.g. :class:`idcmap.train.degrade.ScannerAugment`; called as ``degrade(uint8
    N×H×W×3, numpy Generator)``) makes ``degrade_copies`` degraded copies of the training
    patches once, before the fit; each training sample is then drawn from the clean patch or
    one of its copies with equal probability (then flips and colour jitter as usual).

    ``init`` (a model file or bundled name of the same architecture and parameters): start from
    its weights and normalisation instead of random ones (fine-tuning).

    ``distill_from`` (a model file or bundled name with the same patch size and µm per pixel,
    usually also ``init``): a frozen teacher that sees the clean patch (same
    flips); the loss is ``distill_weight`` · soft-target cross-entropy to its IDC probability +
    (1 − ``distill_weight``) · the class-weighted label loss (:mod:`idcmap.train.distill`).
    ``distill_jitter``: the teacher sees the student's colour jitter too (only the scanner
    degradation is then to be learnt away).
    """
    try:
        import fastai.callback.schedule  # adds lr_find and fit_one_cycle to Learner
        from fastai.callback.fp16 import MixedPrecision  # noqa: F401  (adds to_fp16)
        from fastai.callback.progress import ProgressCallback
        from fastai.data.core import DataLoaders
        from fastai.learner import Learner
        from fastai.metrics import RocAucBinary, accuracy
    except ImportError as e:
        raise UsageError("training needs fastai: pip install 'idcmap[train]'") from e

    out = Path(out)
    if out.suffix != ".json":
        raise UsageError(f"out= must end in .json, got {out}")
    if not mpp > 0:
        raise UsageError(f"mpp= must be > 0 (µm per pixel of the patches), got {mpp}")
    if not 0.0 <= distill_weight <= 1.0:
        raise UsageError(f"distill_weight= must be in [0, 1], got {distill_weight}")
    arch = get_architecture(architecture)
    # as the model file will hold them (JSON: lists, not tuples), so the run records what it used
    params = json.loads(json.dumps({**arch.default_params, **(arch_params or {})}))
    t_start = time.time()
    _seed_everything(seed)
    dev = resolve_device(device)
    with torch_threads(threads or None):  # restored afterwards; None: torch's own setting
        # ---- data and split ---------------------------------------------------------------------
        recs_by_dir = {str(d): data.list_patches(d) for d in data_dirs}
        if split_path is not None:
            split = data.read_split(split_path)
        else:
            groups = {d: sorted({r.patient for r in rs}) for d, rs in recs_by_dir.items()}
            test_counts = {d: mosaic_test for d in groups if data.is_mosaic_folder(d)}
            split = data.split_patients(
                groups,
                seed=seed,
                test_frac=test_frac,
                valid_frac=valid_frac,
                test_counts=test_counts,
            )
        recs = [r for rs in recs_by_dir.values() for r in rs]
        parts = {
            s: _subsample(data.select(recs, split[s]), max_patches, seed + i)
            for i, s in enumerate(data.SPLITS)
        }
        for s in ("train", "valid"):
            if not parts[s] or len({r.label for r in parts[s]}) < 2:
                raise UsageError(
                    f"the {s} split needs patches of both classes; add data or patients"
                )
        split_file = out.with_suffix(".split.json")
        data.write_split(split, split_file, seed=seed, data=[portable_path(d) for d in data_dirs])
        log(
            f"patients train/valid/test: {len(split['train'])}/{len(split['valid'])}/"
            f"{len(split['test'])}; patches {len(parts['train'])}/{len(parts['valid'])}/"
            f"{len(parts['test'])}; split -> {split_file}"
        )

        t0 = time.time()
        arrays = {s: data.load_patches(parts[s]) for s in data.SPLITS if parts[s]}
        labels = {s: np.array([r.label for r in parts[s]], dtype=np.int64) for s in data.SPLITS}
        log(f"loaded patches in {time.time() - t0:.1f} s")
        mean, std = channel_stats(arrays["train"])

        # ---- model, loaders, learner ------------------------------------------------------------
        cfg = ModelConfig(
            name=name,
            version=version,
            architecture=arch.name,
            mpp=float(mpp),
            patch_px=data.PATCH_PX,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            arch_params=params,
        )
        base, init_record = None, None
        if init is not None:  # fine-tune: same architecture, its weights and normalisation
            base = load_model(init, device="cpu")
            if base.config.architecture != arch.name or base.config.arch_params != params:
                raise UsageError(f"init={init}: not a {arch.name} network with {params}")
            cfg = dataclasses.replace(cfg, mean=base.config.mean, std=base.config.std)
            init_record = {"model": portable_path(init), "sha256": base.config.weights_sha256}
        teacher, distill_record = None, None
        if distill_from is not None:
            tm = load_model(distill_from, device="cpu")
            if (tm.config.patch_px, tm.config.mpp) != (cfg.patch_px, cfg.mpp):
                raise UsageError(f"distill_from={distill_from}: not a {cfg.patch_px}-px model")
            teacher = distill.frozen(tm.net).to(dev)
            distill_record = {
                "model": portable_path(distill_from),
                "sha256": tm.config.weights_sha256,
                "weight": distill_weight,
                "teacher_jitter": distill_jitter,
            }
        net = build_network(cfg)
        if base is not None:
            net.load_state_dict(base.net.state_dict())
        cpu = dev.type == "cpu"
        if cpu:
            net = net.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher = teacher.to(memory_format=torch.channels_last)

        def tensors(s: str) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.from_numpy(arrays[s]).permute(0, 3, 1, 2).contiguous().to(dev)
            return x, torch.from_numpy(labels[s]).to(dev)

        pool = None
        if degrade is not None and augment and degrade_copies > 0:
            t0 = time.time()
            if hasattr(degrade, "fit"):  # e.g. colour statistics of the training patches
                degrade = degrade.fit(arrays["train"])
            pool = degraded_copies(arrays["train"], degrade, degrade_copies, seed).to(dev)
            log(f"{degrade_copies} degraded copies of the patches: {time.time() - t0:.0f} s")
        array_dl = array_dl_class()
        train_dl = array_dl(
            *tensors("train"),
            augment=augment,
            pool=pool,
            teacher=teacher,
            teacher_jitter=distill_jitter,
            channels_last=cpu,
            bs=batch_size,
            shuffle=True,
            drop_last=True,
            device=dev,
        )
        valid_dl = array_dl(
            *tensors("valid"),
            augment=False,
            channels_last=cpu,
            bs=512,
            shuffle=False,
            drop_last=False,
            device=dev,
        )
        dls = DataLoaders(train_dl, valid_dl, device=dev)

        # class imbalance: weight each class by the inverse of its frequency in the training split
        counts = np.bincount(labels["train"], minlength=2).astype(np.float64)
        class_w = torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32, device=dev)
        loss: torch.nn.Module = (
            torch.nn.CrossEntropyLoss(weight=class_w)
            if teacher is None
            else distill.DistillLoss(distill_weight, class_w)
        )

        tmp = tempfile.TemporaryDirectory(prefix="idcmap-train-")  # lr_find's scratch files
        learn = Learner(
            dls,
            net,
            loss_func=loss,
            metrics=[accuracy, RocAucBinary()],
            wd=weight_decay,
            path=tmp.name,
            model_dir=".",
        )
        if not progress:
            learn.remove_cb(ProgressCallback)
        if dev.type == "cuda":
            learn.to_fp16()

        t0 = time.time()
        with learn.no_logging() if not progress else contextlib.nullcontext():
            sugg = learn.lr_find(num_it=lr_find_iters, show_plot=False)
        lr_suggested = float(sugg.valley)
        lr_used = float(lr) if lr is not None else float(min(max(lr_suggested, 3e-4), 1e-2))
        log(
            f"lr_find: suggested {lr_suggested:.2e} ({time.time() - t0:.0f} s); "
            f"fit_one_cycle lr_max {lr_used:.2e}"
        )

        t_fit = time.time()
        learn.fit_one_cycle(epochs, lr_max=lr_used)
        fit_s = time.time() - t_fit
        history = [
            dict(zip(learn.recorder.metric_names[1:-1], [_num(v) for v in vals], strict=False))
            for vals in learn.recorder.values
        ]
        tmp.cleanup()

        # ---- threshold on validation, metrics on validation and test ----------------------------
        net = learn.model.float().eval()
        model = IDCModel(cfg, net, torch.device("cpu") if cpu else dev)
        probs = {s: model.predict(arrays[s]) for s in arrays}
        thr = best_threshold(labels["valid"], probs["valid"], threshold_criterion)
        metrics = {s: binary_metrics(labels[s], probs[s], thr) for s in probs}
        for s, m in metrics.items():
            log(
                f"{s:>5}: AUC {m['roc_auc']:.4f} F1 {m['f1']:.4f} BAC {m['balanced_accuracy']:.4f} "
                f"acc {m['accuracy']:.4f} (threshold {thr:.2f}, n={m['n']})"
            )

        training = {
            "framework": "fastai",
            "data": [portable_path(d) for d in data_dirs],
            "split_file": split_file.name,
            "seed": seed,
            "patients": split,
            "patches": {s: len(parts[s]) for s in data.SPLITS},
            "idc_patches": {s: int(labels[s].sum()) for s in data.SPLITS},
            "epochs": epochs,
            "batch_size": batch_size,
            "lr_find_suggestion": lr_suggested,
            "lr_max": lr_used,
            "schedule": "fit_one_cycle",
            "weight_decay": weight_decay,
            "loss": f"cross-entropy, class weights {[round(float(w), 4) for w in class_w]}"
            + (
                f"; x{1 - distill_weight:g}, + x{distill_weight:g} soft cross-entropy to the "
                "teacher's p(IDC) of the clean patch"
                if teacher is not None
                else ""
            ),
            "augmentation": (
                "dihedral (8) + HED stain jitter + brightness/contrast/saturation"
                + (
                    f" after {degrade!r} ({degrade_copies} copies + clean)"
                    if pool is not None
                    else ""
                )
                if augment
                else "none"
            ),
            "threshold_criterion": f"max {threshold_criterion} on validation patients",
            "metrics": metrics,
            "history": history,
            "fit_seconds": round(fit_s, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "device": (
                f"{dev.type} ({torch.get_num_threads()} threads, {platform.processor() or '?'})"
            ),
            "torch": torch.__version__,
            "init": init_record,
            "distill": distill_record,
            "command": command,
        }
        import fastai

        training["fastai"] = fastai.__version__
        # the region threshold starts at the tile threshold; `idcmap evaluate tune-regions` tunes it
        cfg = dataclasses.replace(cfg, tile_threshold=thr, region_threshold=thr, training=training)
        written = save_model(net.cpu(), cfg, out)
        log(
            f"model -> {out} (+ {out.with_suffix('.safetensors').name}); fit {fit_s:.0f} s, "
            f"total {time.time() - t_start:.0f} s"
        )
        return written


def portable_path(path: str | Path) -> str:
    """``path`` as a model file may record it without naming this machine's folders: relative
    paths as given, absolute ones relative to the working directory when they lie below it,
    else the last folder's name only."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def portable_command(argv: Sequence[str]) -> str:
    """A command line to record in a model file (absolute paths: :func:`portable_path`)."""
    return shlex.join(portable_path(a) if os.path.isabs(a) else a for a in argv)


def _num(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return None if math.isnan(f) else round(f, 5)
