"""The model file format: a config (JSON) beside its weights (safetensors), and nothing else.

A model is two files side by side:

* ``<name>.safetensors`` — the weights (no pickle, nothing executed at load time);
* ``<name>.json`` — its config (:class:`ModelConfig`): architecture, µm/px, patch size, input
  normalisation, class names, tile and region thresholds, version, the weights' sha256 and a
  training summary.

This module reads and writes those files and checks them (damaged, foreign, incomplete); it
knows no network. Building and running a network is :mod:`idcmap.model.runtime`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idcmap.errors import ModelError, UsageError

if TYPE_CHECKING:  # torch is imported by the functions that need it: `idcmap info` stays light
    import torch
    from torch import nn

FORMAT = "idcmap-model/1"
#: The model :func:`bundled_model_path` names by default; the others load by name
#: (``load_model("idc-v1")``, ``--model idc-v1``).
BUNDLED_MODEL = "idc-v4-glass"


@dataclass(frozen=True)
class ModelConfig:
    """What a model file says about itself (the JSON beside the weights).

    Attributes:
        name: short model name, e.g. ``"idcmap-idc"``.
        version: the model's own version string.
        architecture: name of a registered architecture
            (:data:`idcmap.model.runtime.ARCHITECTURES`).
        arch_params: keyword arguments of the architecture (e.g. ``widths``).
        mpp: µm per pixel the model expects (the IDC data set: 4.0).
        patch_px: side of one input patch in model pixels (50).
        mean, std: per-channel normalisation of inputs scaled to [0, 1] (applied inside the net).
        class_names: names of the logits, negative first.
        tile_threshold: IDC-probability threshold of one tile (patch), chosen on validation
            patients; classifies tiles (e.g. the tile GeoJSON). Model files written by 0.1.0
            call it ``threshold``.
        region_threshold: threshold of the smoothed heatmap for region masks, chosen with
            ``idcmap evaluate tune-regions``; a file without one uses ``tile_threshold``.
        smooth_um: sigma (µm) of the tissue-aware Gaussian applied to the heatmap before
            region masks are drawn (0: none); chosen with ``idcmap evaluate tune-regions``.
        weights_file: file name of the safetensors weights, next to the JSON.
        weights_sha256: sha256 of that file; checked at load.
        training: free-form training summary (data, split, epochs, metrics).
        aggregator: the learned aggregation stage (:mod:`idcmap.pipeline.aggregate`) as the JSON
            describes it (kind, features, sigmas, region threshold); its numbers are the
            ``aggregator.*`` tensors of the safetensors. Empty: no aggregator (the fixed
            Gaussian ``smooth_um`` draws the regions).
        stain_norm: per-slide stain normalisation (:mod:`idcmap.pipeline.stain`):
            ``{"method": ..., "ref": {...}, ...}``, the method and the reference statistics
            of the training slides that every slide's tissue colour is mapped to before the
            network. Empty: none (the slide's colour goes in as read).
        blur_model: a second network for out-of-focus tissue (:mod:`idcmap.pipeline.segment`):
            ``{"model": <a bundled model's name>, "logit_shift": <float>}``. The tissue cells the
            QC stage finds blurred get its probability, plus ``logit_shift`` on the logit,
            instead of this network's lifted one. Empty: none.
        ink_model: a second network for tissue under marker ink (:mod:`idcmap.pipeline.segment`):
            ``{"model": <a bundled model's name>}``. The tissue cells under ink over tissue get
            its probability of the tiles as scanned (ink and all) instead of this network's
            probability of the un-inked tiles. Empty: none.
    """

    name: str
    version: str
    architecture: str
    mpp: float
    patch_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, str] = ("not IDC", "IDC")
    tile_threshold: float = 0.5
    region_threshold: float = math.nan  # NaN: the tile threshold (resolved in __post_init__)
    smooth_um: float = 0.0
    arch_params: dict[str, Any] = field(default_factory=dict)
    weights_file: str = ""
    weights_sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    aggregator: dict[str, Any] = field(default_factory=dict)
    stain_norm: dict[str, Any] = field(default_factory=dict)
    blur_model: dict[str, Any] = field(default_factory=dict)
    ink_model: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def __post_init__(self) -> None:
        if math.isnan(self.region_threshold):
            object.__setattr__(self, "region_threshold", self.tile_threshold)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` (field names as keywords)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        d = asdict(self)
        # files without them stay as they were
        for key in ("stain_norm", "blur_model", "ink_model"):
            if not d[key]:
                del d[key]
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if d.get("format") != FORMAT:
            raise ModelError(
                f"not an idcmap model config (format {d.get('format')!r}, expected {FORMAT!r}); "
                "pass a .json written by 'idcmap train' or leave model= unset for the bundled one"
            )
        try:
            c0, c1 = (str(c) for c in d.get("class_names", ("not IDC", "IDC")))
            region = d.get("region_threshold")
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                architecture=str(d["architecture"]),
                mpp=float(d["mpp"]),
                patch_px=int(d["patch_px"]),
                mean=_rgb(d["mean"]),
                std=_rgb(d["std"]),
                class_names=(c0, c1),
                # 0.1.0 files name the tile threshold "threshold"
                tile_threshold=float(d.get("tile_threshold", d.get("threshold", 0.5))),
                region_threshold=math.nan if region is None else float(region),
                smooth_um=float(d.get("smooth_um", 0.0)),
                arch_params=dict(d.get("arch_params", {})),
                weights_file=str(d.get("weights_file", "")),
                weights_sha256=str(d.get("weights_sha256", "")),
                training=dict(d.get("training", {})),
                aggregator=dict(d.get("aggregator") or {}),
                stain_norm=_stain_norm(d.get("stain_norm")),
                blur_model=_blur_model(d.get("blur_model")),
                ink_model=_ink_model(d.get("ink_model")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(
                f"model config is incomplete or malformed ({e!r}); re-export it"
            ) from e


def _stain_norm(v: Any) -> dict[str, Any]:
    """The ``stain_norm`` section, checked (method known, reference complete)."""
    if not v:
        return {}
    from idcmap.pipeline.stain import StainStats

    if not isinstance(v, dict) or not isinstance(v.get("ref"), dict):
        raise ValueError(f"stain_norm must be {{'method': ..., 'ref': {{...}}}}, got {v!r}")
    StainStats.from_dict(str(v.get("method")), v["ref"])
    return dict(v)


def _blur_model(v: Any) -> dict[str, Any]:
    """The ``blur_model`` section, checked (a model name and a finite logit shift)."""
    if not v:
        return {}
    if not isinstance(v, dict) or not isinstance(v.get("model"), str) or not v["model"]:
        raise ValueError(f"blur_model must be {{'model': <name>, 'logit_shift': x}}, got {v!r}")
    if not math.isfinite(float(v.get("logit_shift", 0.0))):
        raise ValueError(f"blur_model logit_shift must be finite, got {v!r}")
    return {"model": v["model"], "logit_shift": float(v.get("logit_shift", 0.0))}


def _ink_model(v: Any) -> dict[str, Any]:
    """The ``ink_model`` section, checked (a model name)."""
    if not v:
        return {}
    if not isinstance(v, dict) or not isinstance(v.get("model"), str) or not v["model"]:
        raise ValueError(f"ink_model must be {{'model': <name>}}, got {v!r}")
    return {"model": v["model"]}


def _rgb(v: Any) -> tuple[float, float, float]:
    r, g, b = (float(x) for x in v)
    return r, g, b


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_model_path(name: str = BUNDLED_MODEL) -> Path:
    """Path of the JSON of a model shipped inside the package (default: the default one)."""
    return Path(str(resources.files("idcmap.model") / "weights" / f"{name}.json"))


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package (``idc-v1``, ``idc-v2``...)."""
    folder = Path(str(resources.files("idcmap.model") / "weights"))
    return sorted(q.stem for q in folder.glob("*.json") if not q.name.endswith(".split.json"))


# ---- reading ------------------------------------------------------------------------------------


def find_config(path: str | Path) -> Path:
    """The model JSON that ``path`` names: itself, the JSON beside a ``.safetensors``, the one
    model JSON of a folder (a training split file ``*.split.json`` beside it is no model), or
    a bundled model by name (``idc-v1``) when no such file exists."""
    p = Path(path)
    if not p.exists() and str(path) in bundled_models():  # a bundled model by name: idc-v1
        return bundled_model_path(str(path))
    if p.is_dir():
        found = sorted(q for q in p.glob("*.json") if not q.name.endswith(".split.json"))
        if len(found) != 1:
            raise ModelError(f"{p} should hold exactly one model .json, found {len(found)}")
        return found[0]
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise ModelError(_not_found(p))
    return p


def _not_found(p: Path) -> str:
    """The error for a model that names no file: the closest bundled name, or them all."""
    import difflib

    names = bundled_models()
    if p.suffix or len(p.parts) > 1:  # a path: a file the user meant to give
        return f"model config {p} not found; pass the .json written by 'idcmap train'"
    close = difflib.get_close_matches(str(p), names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"no model file or bundled model named {p}; {hint}bundled: {', '.join(names)} "
        "(or pass the .json written by 'idcmap train')"
    )


def read_config(json_path: str | Path) -> ModelConfig:
    """The config of a model JSON (checked: an idcmap model file, complete)."""
    json_path = Path(json_path)
    try:
        d = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model config {json_path}: {e}; re-export the model") from e
    if not isinstance(d, dict):
        raise ModelError(f"{json_path} is not an idcmap model config; re-export the model")
    return ModelConfig.from_dict(d)


def weights_path(json_path: str | Path, config: ModelConfig) -> Path:
    """Where the weights of the model at ``json_path`` are (next to it)."""
    json_path = Path(json_path)
    return json_path.parent / (config.weights_file or json_path.with_suffix(".safetensors").name)


def read_weights(json_path: str | Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of the model at ``json_path``, checked against the config's sha256 and read
    with safetensors: nothing is unpickled."""
    weights = weights_path(json_path, config)
    if not weights.is_file():
        raise ModelError(
            f"model weights {weights} are missing; keep the .safetensors next to its .json"
        )
    digest = sha256_file(weights)
    if config.weights_sha256 and digest != config.weights_sha256:
        raise ModelError(
            f"model weights {weights} do not match their config (sha256 {digest[:12]}… ≠ "
            f"{config.weights_sha256[:12]}…): the file is damaged or foreign; reinstall or "
            "re-export"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:  # a corrupt header, a truncated file
        raise ModelError(
            f"cannot load weights {weights}: {e}; reinstall or re-export the model"
        ) from e


# ---- writing ------------------------------------------------------------------------------------


def save_model(
    net: nn.Module,
    config: ModelConfig,
    json_path: str | Path,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> ModelConfig:
    """Write ``net``'s weights as safetensors next to ``json_path`` and the config with their
    sha256. ``extra_tensors`` (e.g. the aggregator's ``aggregator.*``) go into the same file.
    Returns the config as written."""
    from safetensors.torch import save_file

    json_path = check_destination(json_path)
    weights = json_path.with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        if k in state:
            raise ValueError(f"tensor {k!r} would overwrite a weight of the network")
        state[k] = v.detach().cpu().contiguous()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights), metadata={"format": FORMAT})
    cfg = config.replace(weights_file=weights.name, weights_sha256=sha256_file(weights))
    _write_json(cfg, json_path)
    return cfg


def save_config(config: ModelConfig, json_path: str | Path, weights: str | Path) -> ModelConfig:
    """Write a model whose weights already exist in ``weights`` (e.g. the same network with a
    re-tuned config): the weights are copied next to ``json_path`` unless they are there
    already, checked against ``config.weights_sha256``, and the config is written. Returns the
    config as written."""
    json_path = check_destination(json_path)
    weights = Path(weights)
    target = json_path.with_suffix(".safetensors")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and os.path.samefile(target, weights)):
        tmp = target.with_suffix(".safetensors.tmp")
        shutil.copyfile(weights, tmp)
        tmp.replace(target)
    digest = sha256_file(target)
    if config.weights_sha256 and digest != config.weights_sha256:
        raise ModelError(
            f"model weights {weights} do not match their config (sha256 {digest[:12]}… ≠ "
            f"{config.weights_sha256[:12]}…)"
        )
    cfg = config.replace(weights_file=target.name, weights_sha256=digest)
    _write_json(cfg, json_path)
    return cfg


def check_destination(json_path: str | Path) -> Path:
    """Check a path a model is to be written to: a ``.json``, outside the installed package
    (whose bundled model must stay as shipped, with its sha256)."""
    json_path = Path(json_path)
    if json_path.suffix != ".json":
        raise UsageError(f"a model path must end in .json, got {json_path}")
    package = Path(str(resources.files("idcmap"))).resolve()
    if json_path.resolve().is_relative_to(package):
        raise UsageError(
            f"will not write a model into the installed idcmap package ({json_path}); "
            "name a path outside it"
        )
    return json_path


def _write_json(config: ModelConfig, json_path: Path) -> None:
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(config.to_json())
    tmp.replace(json_path)
