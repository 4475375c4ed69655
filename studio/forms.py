"""Form widgets shared by the New run and Sensitivity pages, validation, and the cached model summary.

Every user-fixable problem becomes a message (a ``PrunerError``'s text, or one written here)
that the page shows with ``st.error``; nothing here lets a traceback reach the page.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig

from .state import slug, uploads_dir

FALLBACK_ZOO = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "vgg16", "vgg19", "mobilenetv2",
                "googlenet"]

DATASETS = {
    "digits": "Digits — offline demo (10 classes, 8×8 upscaled to 32×32)",
    "cifar10": "CIFAR-10 (torchvision; found under the data root or downloaded)",
    "cifar100": "CIFAR-100 (torchvision; found under the data root or downloaded)",
    "cifar10-jpeg": "CIFAR-10 JPEG ImageFolder (<data root>/cifar10-jpeg)",
    "folder": "ImageFolder path…",
}

BUDGETS = {"flops": "FLOPs (MACs)", "params": "Parameters", "latency": "Latency (measured on this machine)"}

STRATEGY_HELP = {
    "rl": "RL-Pruner: a policy over layer groups learned from the rewards of sampled candidates",
    "constrained": "Constrained RL: policy gradient with a Lagrange multiplier on the cost",
    "purl": "PuRL: a step-wise pruning agent with dense per-step rewards",
    "joint": "Joint: trains weights while a learned world model proposes pruning",
    "uniform": "Uniform: the same fraction from every layer group (one evaluation)",
    "global": "Global: all channels ranked together by normalised importance (one evaluation)",
    "random": "Random allocations solved to the budget; the best is kept",
    "sensitivity": "Sensitivity: probe each layer group, prune in inverse proportion to its measured damage",
}

# Defaults that finish in about a minute on a 2-core CPU (digits demo, or ResNet-20 on the CIFAR-10 copy).
QUICK = {
    "search_evals": 16, "search_images": 200, "recal_images": 128, "report_images": 300,
    "latency_repeats": 10, "finetune_epochs": 2, "max_batches": 15, "batch_size": 64,
}

WEIGHT_CHOICES = {"pretrained": "pretrained", "random": "random init", "file": "upload a weights file"}


def default_dataset() -> str:
    """The first-run dataset: the CIFAR-10 JPEG copy when it and ResNet-20's pretrained CIFAR-10
    weights are already on this machine (no download: a real model, real accuracy), else the
    offline digits demo (random init)."""
    try:
        from pruner.models.cifar_resnet import PRETRAINED
        from pruner.settings import data_root, weights_dir
        if (data_root() / "cifar10-jpeg" / "train").is_dir() and (weights_dir() / PRETRAINED["resnet20"]).is_file():
            return "cifar10-jpeg"
    except Exception:  # noqa: BLE001 - a default must never break the page
        pass
    return "digits"


def zoo_names() -> list[str]:
    try:
        from pruner.models import list_zoo
        names = list(list_zoo())
        return names or FALLBACK_ZOO
    except Exception:
        return FALLBACK_ZOO


def has_pretrained(name: str) -> bool:
    try:
        from pruner.models import has_pretrained as hp
        return bool(hp(name))
    except Exception:
        return name.startswith("resnet") and name in ("resnet20", "resnet32", "resnet44", "resnet56")


def strategy_list() -> list[str]:
    try:
        from pruner.search import strategy_names
        return list(strategy_names())
    except Exception:
        return ["rl", "uniform", "global", "random"]


def strategy_defaults(name: str) -> dict[str, Any]:
    try:
        from pruner.search import strategy_class
        return dict(strategy_class(name).defaults())
    except Exception:
        return {}


def strategy_uses_evaluations(name: str) -> bool:
    try:
        from pruner.search import strategy_class
        return bool(getattr(strategy_class(name), "uses_evaluations", True))
    except Exception:
        return True


# ---------------------------------------------------------------------- uploads
def save_upload(data: bytes, filename: str) -> Path:
    """Store an uploaded file under ``<runs root>/uploads/`` (content-addressed, so re-uploads are free)."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    safe = slug(Path(filename).stem)[:40] + (Path(filename).suffix.lower() if Path(filename).suffix else "")
    path = uploads_dir() / f"{digest}-{safe}"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def factories_in(source: bytes, filename: str) -> list[str]:
    """Public top-level functions and classes of an uploaded model file (candidate factories)."""
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise PrunerError(f"{filename} is not a UTF-8 text file; upload the Python source (.py) that defines "
                          "the model factory") from None
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise PrunerError(f"{filename} is not valid Python (line {exc.lineno}: {exc.msg}); fix the file and "
                          "upload it again") from None
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
    if not names:
        raise PrunerError(f"{filename} defines no public function or class; add a factory such as "
                          "`def build(num_classes): return MyNet(num_classes)`")
    preferred = [n for n in names if any(w in n.lower() for w in ("build", "create", "make", "get_model", "model"))]
    return preferred + [n for n in names if n not in preferred]


# ---------------------------------------------------------------------- model + data inputs
@dataclass
class ModelData:
    model: str | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    data: str | None = None
    image_size: int | None = None
    errors: list[str] = field(default_factory=list)


def _on_data_change(prefix: str) -> None:
    # digits is a different task than the zoo's CIFAR weights: default to random init there
    data = st.session_state.get(f"{prefix}data")
    wkey = f"{prefix}weights"
    if data == "digits" and st.session_state.get(wkey) == "pretrained":
        st.session_state[wkey] = "random"
    elif data != "digits" and st.session_state.get(wkey) == "random" and \
            has_pretrained(st.session_state.get(f"{prefix}zoo_model", "")):
        st.session_state[wkey] = "pretrained"


def _on_model_change(prefix: str) -> None:
    wkey = f"{prefix}weights"
    if st.session_state.get(wkey) == "pretrained" and not has_pretrained(st.session_state.get(f"{prefix}zoo_model", "")):
        st.session_state[wkey] = "random"


def model_data_inputs(prefix: str = "") -> ModelData:
    """Model source, weights and dataset widgets; returns the choices and any problems found."""
    out = ModelData()
    st.subheader("Model")
    source = st.radio("Model source", ["zoo", "torchvision", "upload"], key=f"{prefix}source", horizontal=True,
                      format_func={"zoo": "CIFAR zoo", "torchvision": "torchvision", "upload": "upload a .py"}.get,
                      help="Zoo models are CIFAR-sized (32×32); torchvision models are ImageNet architectures; "
                           "an uploaded Python file must define a factory function returning an nn.Module.")
    if f"{prefix}data" not in st.session_state:  # first render: a dataset the weights default suits
        st.session_state[f"{prefix}data"] = default_dataset()
        st.session_state.setdefault(f"{prefix}weights", "random" if st.session_state[f"{prefix}data"] == "digits"
                                    else "pretrained")
    st.session_state.setdefault(f"{prefix}weights", "random")
    if source == "zoo":
        zoo = zoo_names()
        name = st.selectbox("Architecture", zoo, key=f"{prefix}zoo_model", on_change=_on_model_change, args=(prefix,),
                            format_func=lambda n: f"{n}  ·  pretrained on CIFAR-10" if has_pretrained(n) else n)
        out.model = name
    elif source == "torchvision":
        name = st.text_input("torchvision model name", value="resnet18", key=f"{prefix}tv_model",
                             help="Any name from torchvision.models.list_models(), e.g. resnet18, mobilenet_v3_small")
        out.model = f"torchvision:{name.strip()}" if name.strip() else None
        if not name.strip():
            out.errors.append("Enter a torchvision model name such as resnet18.")
    else:
        py = st.file_uploader("Model file (.py with a factory function)", type=["py"], key=f"{prefix}upload_py")
        if py is None:
            out.errors.append("Upload the model's .py file (a factory such as `def build(num_classes): ...`), "
                              "or pick a zoo model.")
        else:
            data = py.getvalue()
            try:
                names = factories_in(data, py.name)
                factory = st.selectbox("Factory", names, key=f"{prefix}factory",
                                       help="Called as factory(num_classes=N) (or factory()) to build the model")
                path = save_upload(data, py.name)
                out.model = f"file:{path}:{factory}"
            except PrunerError as exc:
                out.errors.append(str(exc))

    choices = list(WEIGHT_CHOICES)
    if source == "upload":
        choices = ["random", "file"]
        if st.session_state.get(f"{prefix}weights") == "pretrained":
            st.session_state[f"{prefix}weights"] = "random"
    weights = st.radio("Weights", choices, key=f"{prefix}weights", horizontal=True, format_func=WEIGHT_CHOICES.get,
                       help="Pretrained CIFAR-10 weights exist for resnet20/32/44/56; torchvision weights are "
                            "ImageNet weights (downloaded when missing).")
    if weights == "pretrained":
        out.weights = "pretrained"
    elif weights == "random":
        out.weights = None
    else:
        wf = st.file_uploader("Weights file (state dict: .pt, .pth, .th)", key=f"{prefix}upload_weights")
        out.trust_checkpoint = st.checkbox(
            "The file is a whole pickled model — load it with pickle (only for files you trust)",
            key=f"{prefix}trust", value=False)
        if wf is None:
            out.errors.append("Upload the weights file, or choose pretrained / random init.")
        else:
            data = wf.getvalue()
            if not data:
                out.errors.append(f"The uploaded weights file {wf.name} is empty; upload the saved state dict.")
            else:
                out.weights = str(save_upload(data, wf.name))

    st.subheader("Dataset")
    kind = st.selectbox("Dataset", list(DATASETS), key=f"{prefix}data", format_func=DATASETS.get,
                        on_change=_on_data_change, args=(prefix,))
    if kind == "folder":
        folder = st.text_input("ImageFolder path", key=f"{prefix}folder", placeholder="/data/my-images",
                               help="A folder with train/ and test/ (or val/), one sub-folder per class")
        folder = folder.strip()
        size = st.number_input("Resize images to (px, 0 = automatic)", min_value=0, max_value=1024, value=0, step=8,
                               key=f"{prefix}image_size")
        out.image_size = int(size) or None
        if not folder:
            out.errors.append("Enter the path of an ImageFolder (a folder with train/ and test/ or val/ "
                              "sub-folders, one folder per class inside each).")
        elif not Path(folder).expanduser().exists():
            out.errors.append(f"The ImageFolder path {folder} does not exist; enter the folder that holds "
                              "train/ and test/ (or val/).")
        elif not Path(folder).expanduser().is_dir():
            out.errors.append(f"{folder} is a file, not a folder; enter the folder that holds train/ and test/.")
        else:
            out.data = str(Path(folder).expanduser().resolve())
    else:
        out.data = kind
        if kind != "digits":
            from pruner.settings import data_root
            st.caption(f"Data root: `{data_root()}` (set PRUNER_DATA_ROOT to change it)")
    return out


def device_input(prefix: str = "") -> str:
    return st.radio("Device", ["auto", "cpu", "cuda"], key=f"{prefix}device", horizontal=True,
                    format_func={"auto": "auto", "cpu": "CPU", "cuda": "CUDA"}.get,
                    help="auto uses a CUDA GPU when one is present")


def check_device(device: str) -> str | None:
    from pruner.settings import resolve_device
    try:
        resolve_device(device)
    except PrunerError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------- strategy hyper-parameters
def _parse_free(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def strategy_param_inputs(strategy: str, prefix: str = "") -> dict[str, Any]:
    """One input per hyper-parameter of ``strategy`` (from its defaults); returns the changed ones."""
    defaults = strategy_defaults(strategy)
    if not defaults:
        st.caption(f"`{strategy}` has no hyper-parameters.")
        return {}
    changed: dict[str, Any] = {}
    cols = st.columns(3)
    for i, (name, default) in enumerate(defaults.items()):
        key = f"{prefix}sp_{strategy}_{name}"
        with cols[i % 3]:
            if isinstance(default, bool):
                value = st.checkbox(name, value=default, key=key)
            elif isinstance(default, int):
                value = int(st.number_input(name, value=default, step=1, key=key))
            elif isinstance(default, float):
                value = float(st.number_input(name, value=default, format="%g", step=abs(default) / 10 or 0.01,
                                              key=key))
            elif default is None:
                value = _parse_free(st.text_input(name, value="", key=key, placeholder="default",
                                                  help="empty = engine default; numbers and JSON are parsed"))
            else:
                value = st.text_input(name, value=str(default), key=key)
        if value != default:
            changed[name] = value
    return changed


# ---------------------------------------------------------------------- building configs
def build_config(**fields: Any) -> tuple[RunConfig | None, str | None]:
    """``RunConfig(**fields)`` or the user-facing reason it is invalid."""
    try:
        cfg = RunConfig(**fields)
        from pruner.search import make_strategy
        make_strategy(cfg.strategy, **cfg.strategy_params)
        return cfg, None
    except PrunerError as exc:
        return None, str(exc)
    except (TypeError, ValueError) as exc:
        return None, f"invalid setting: {exc}"


def finetune_config(epochs: int, max_batches: int | None, batch_size: int, lr: float, kd_weight: float,
                    kd_temperature: float) -> FinetuneConfig:
    return FinetuneConfig(epochs=int(epochs), max_batches_per_epoch=int(max_batches) if max_batches else None,
                          batch_size=int(batch_size), lr=float(lr), kd_weight=float(kd_weight),
                          kd_temperature=float(kd_temperature))


# ---------------------------------------------------------------------- model summary
SUMMARY_FIELDS = ("model", "weights", "trust_checkpoint", "data", "data_root", "image_size", "protocol", "val_size",
                  "min_channels", "max_prune", "seed")


def summary_key(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    return json.dumps({k: d.get(k) for k in SUMMARY_FIELDS}, sort_keys=True)


@st.cache_resource(show_spinner=False, max_entries=8)
def _model_summary(key: str) -> dict:
    """Load data, model and pruning space once per distinct setting (errors are cached too)."""
    try:
        from pruner.measure import latency_ms
        from pruner.runs.job import Session

        cfg = RunConfig(**json.loads(key), device="cpu", importance="l1")
        session = Session(cfg)
        model = session.model.cpu().eval()
        try:
            lat = latency_ms(model, session.data.input_size, repeats=20, warmup=3)
        except Exception:
            lat = None
        space = session.space
        result = {
            "groups": [g.to_dict() for g in space.groups], "macs": space.base_macs, "params": space.base_params,
            "latency_ms": lat, "data": session.data.describe(), "error": None,
        }
        del session
        return result
    except PrunerError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a bug or an unexpected environment problem: one line, never a traceback
        return {"error": f"could not load the model and data ({type(exc).__name__}: {exc})"}


def model_summary(cfg: RunConfig) -> dict:
    return _model_summary(summary_key(cfg))
