"""Form widgets shared by the New run and Sensitivity pages, validation, and the cached model summary.

Every user-fixable problem becomes a message (a ``PrunerError``'s text, or one written here)
that the page shows with ``st.error``; nothing here lets a traceback reach the page.

Nothing here runs user code or decodes a dataset in the web server process: an uploaded
``.py`` is only parsed (``ast``) until the user ticks "I trust this file: run its code", and
the model summary is built in a child process (:mod:`pruner.model_summary`) that returns JSON.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import streamlit as st

from pruner.budget import KINDS, Budget
from pruner.data import PROTOCOLS
from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig, finetune_plan
from pruner.models import has_pretrained, list_zoo, pretrained_file
from pruner.progress import format_seconds, plan_text
from pruner.settings import WEIGHTS_DIR_ENV
from pruner.pruning.importance import CRITERIA
from pruner.search.evaluator import SCORES
from pruner.recipes import DESCRIPTIONS as RECIPE_DESCRIPTIONS, RECIPES, recipe_settings
from pruner.runs.config import RunConfig
from pruner.search import strategy_class, strategy_names
from pruner.search.base import Param
from pruner.settings import DEVICES
from pruner.userfile import MAX_SOURCE_BYTES, factories_in, size_text

from . import assets
from .state import strategy_uses_evaluations  # noqa: F401 (the pages ask the forms)
from .state import all_runs, run_name_problem, slug, uploads_dir


DATASETS = {
    "digits": "Digits — offline demo (10 classes, 8×8 upscaled to 32×32)",
    "cifar10": "CIFAR-10 (torchvision; found under the data root or downloaded)",
    "cifar100": "CIFAR-100 (torchvision; found under the data root or downloaded)",
    "cifar10-jpeg": "CIFAR-10 JPEG ImageFolder (<data root>/cifar10-jpeg)",
    "folder": "ImageFolder path…",
}

_BUDGET_LABELS = {"flops": "FLOPs (MACs)", "params": "Parameters", "latency": "Latency (measured on this machine)",
                  "sparsity": "Weight sparsity (zeros in conv/linear weights)"}
#: the engine's budget kinds (pruner.budget.KINDS), labelled
BUDGETS = {kind: _BUDGET_LABELS.get(kind, kind) for kind in KINDS}

STRATEGY_HELP = {
    "rl": "after RL-Pruner: sensitivity probes, then an evolutionary search over group features (preset=paper: closer to the paper)",
    "constrained": "Constrained RL: policy gradient with a Lagrange multiplier on the cost",
    "purl": "PuRL: a step-wise pruning agent with dense per-step rewards",
    "joint": "Joint: trains weights while a learned world model proposes pruning",
    "uniform": "Uniform: the same fraction from every layer group (one evaluation)",
    "global": "Global: all channels ranked together by normalised importance (one evaluation)",
    "random": "Random allocations solved to the budget; the best is kept",
    "optuna": "Optuna (TPE or CMA-ES) over per-group allocations solved to the budget, warm-started from the sensitivity probes: the black-box peer",
    "sensitivity": "Sensitivity: probe each layer group, prune in inverse proportion to its measured damage (per unit of cost saved under params and sparsity budgets)",
}

# Defaults that finish in about half a minute on a quiet 2-core CPU (22 s for ResNet-20 on the CIFAR-10 copy:
# bench/results/run_estimate.txt).
QUICK = {
    "search_evals": 16, "search_images": 200, "recal_images": 128, "report_images": 300,
    "latency_repeats": 10, "finetune_epochs": 2, "max_batches": 15, "batch_size": 64,
}

WEIGHT_CHOICES = {"pretrained": "pretrained", "random": "random init", "file": "upload a weights file"}

TRUST_CODE_LABEL = "I trust this file: run its code"
UPLOAD_PY_HELP = (f"A Python file of at most {size_text(MAX_SOURCE_BYTES)} that defines a factory function "
                  "returning an nn.Module. It is parsed (in a separate, time- and memory-limited process) to list "
                  "its functions; its code runs only after you tick the box below.")
TRUST_CODE_HELP = ("Building the model imports the uploaded file, which runs its code with this server's rights. "
                   "It runs in a separate process (for the model summary, then in the job), never in the web "
                   "server, and only once this box is ticked. Tick it only for a file you wrote or trust.")
NEEDS_CODE_CONSENT = (f"The uploaded model is Python code: tick “{TRUST_CODE_LABEL}” to build it (its code then "
                      "runs in a separate process for the summary and in the job); until then nothing in it runs.")


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


def strategy_list() -> list[str]:
    return strategy_names()


def strategy_defaults(name: str) -> dict[str, Any]:
    return strategy_class(name).defaults()


def example_model_download(key: str) -> None:
    """The example model file (``assets/example_model.py``) for the upload field."""
    try:
        data = assets.example_model()
    except OSError:
        return
    st.download_button("Example model file", data=data, file_name=Path(assets.EXAMPLE_MODEL).name,
                       mime="text/x-python", key=key, on_click="ignore", icon=":material/download:",
                       help="A small CNN with a `build(num_classes)` factory: a template for your own model file")


# ---------------------------------------------------------------------- uploads
def save_upload(data: bytes, filename: str) -> Path:
    """Store an uploaded file under ``<runs root>/uploads/`` (content-addressed, so re-uploads are free).

    A disk that is full or cannot be written is a one-line :class:`PrunerError`, and no partial
    file is left behind.
    """
    digest = hashlib.sha256(data).hexdigest()[:12]
    safe = slug(Path(filename).stem)[:40] + (Path(filename).suffix.lower() if Path(filename).suffix else "")
    folder: Path | None = None
    tmp: str | None = None
    try:
        folder = uploads_dir()
        path = folder / f"{digest}-{safe}"
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            tmp = None
        return path
    except OSError as exc:
        where, why = folder or exc.filename or "the runs folder", exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PrunerError(f"the disk holding {where} is full ({why}); free space and upload {filename} "
                              "again") from None
        raise PrunerError(f"{where} could not be written ({why}); free space or fix the folder's permissions and "
                          f"upload {filename} again") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# ---------------------------------------------------------------------- model + data inputs
@dataclass
class ModelData:
    model: str | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    trust_code: bool = False
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
    source = _model_inputs(prefix, out)
    _weights_inputs(prefix, out, source)
    _dataset_inputs(prefix, out)
    return out


def _model_inputs(prefix: str, out: ModelData) -> str:
    """The Model section (source, architecture / name / uploaded file) into ``out``; returns the source."""
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
        zoo = list_zoo()
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
        _uploaded_model(prefix, out)
    return source


def _uploaded_model(prefix: str, out: ModelData) -> None:
    """An uploaded model file: its factory, and the consent to run it (per file) into ``out``."""
    py = st.file_uploader("Model file (.py with a factory function)", type=["py"], key=f"{prefix}upload_py",
                          help=UPLOAD_PY_HELP)
    st.caption(f"At most {size_text(MAX_SOURCE_BYTES)}. The file is parsed to list its functions, not run.")
    example_model_download(f"{prefix}example_model")
    if py is None:
        out.errors.append("Upload the model's .py file (a factory such as `def build(num_classes): ...`), "
                          "or pick a zoo model.")
    else:
        data = py.getvalue()
        try:
            names = factories_in(data, py.name)
            factory = st.selectbox("Factory", names, key=f"{prefix}factory",
                                   help="Called as factory(num_classes=N) (or factory()) to build the model")
            path = save_upload(data, py.name)  # stored, not imported
            consent_key, consent_for = f"{prefix}trust_code", f"{prefix}trust_code_for"
            if st.session_state.get(consent_for) != str(path):  # consent is per file: a new one starts unticked
                st.session_state[consent_key] = False
                st.session_state[consent_for] = str(path)
            out.trust_code = st.checkbox(TRUST_CODE_LABEL, key=consent_key, help=TRUST_CODE_HELP)
            if out.trust_code:
                out.model = f"file:{path}:{factory}"
            else:
                out.errors.append(NEEDS_CODE_CONSENT)
        except PrunerError as exc:
            out.errors.append(str(exc))


def _weights_inputs(prefix: str, out: ModelData, source: str) -> None:
    """The Weights choice (pretrained, random, an uploaded file) into ``out``."""
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
        found = pretrained_file(out.model) if out.model else None
        if found is not None and not found[1]:
            st.caption(f":material/cloud_download: The pretrained weights ({found[0]}) are not on this machine: "
                       "the run downloads them, which fails without internet. Put the file in the folder "
                       f"{WEIGHTS_DIR_ENV} names, or choose random init.")
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
                try:
                    out.weights = str(save_upload(data, wf.name))
                except PrunerError as exc:
                    out.errors.append(str(exc))


def _dataset_inputs(prefix: str, out: ModelData) -> None:
    """The Dataset section (a built-in set or an ImageFolder path) into ``out``."""
    st.subheader("Dataset")
    kind = st.selectbox("Dataset", list(DATASETS), key=f"{prefix}data", format_func=DATASETS.get,
                        on_change=_on_data_change, args=(prefix,))
    if kind == "folder":
        folder = st.text_input("ImageFolder path", key=f"{prefix}folder", placeholder="/data/my-images",
                               help="A folder with train/ and test/ (or val/), one sub-folder per class")
        folder = folder.strip()
        size = st.number_input("Resize images to (px, 0 = automatic)", min_value=0, value=0, step=8,
                               key=f"{prefix}image_size",
                               help="8 to 512 px: decoded images are held in memory by the job")
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


def device_input(prefix: str = "") -> str:
    return st.radio("Device", list(DEVICES), key=f"{prefix}device", horizontal=True,
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
#: the choice lists of the settings the pages offer, from the modules that own them
IMPORTANCE_CHOICES = list(CRITERIA)
SCORE_CHOICES = list(SCORES)
#: what each search score means, for the form's help
SCORE_HELP = ("What the search maximises on the search split. top1: top-1 %. kl: fidelity to the unpruned "
              "model's outputs on the same images, 100*exp(-KL), a smoother signal than top-1 on a few images. "
              "Both are recorded for every candidate.")
PROTOCOL_CHOICES = list(PROTOCOLS)
#: the engine's defaults for the settings the form shows (the QUICK ones above excepted)
RUN_DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}
FT_DEFAULTS = FinetuneConfig()


def _param_widget(name: str, spec: Param, key: str) -> Any:
    """The widget a declared strategy parameter asks for; returns the entered value (unchecked)."""
    help_text = f"{spec.help} ({spec.range_text()})"
    if spec.kind is bool:
        return st.checkbox(name, value=spec.default, key=key, help=help_text)
    if spec.kind is str:
        if spec.choices and not spec.prefixes:
            options = list(spec.choices)
            return st.selectbox(name, options, index=options.index(spec.default), key=key, help=help_text)
        return st.text_input(name, value=spec.default or "", key=key, help=help_text).strip()
    bounds = {}
    if spec.low is not None:
        bounds["min_value"] = spec.kind(spec.low)
    if spec.high is not None:
        bounds["max_value"] = spec.kind(spec.high)
    if spec.kind is int:
        return st.number_input(name, value=spec.default, step=1, key=key, help=help_text,
                               placeholder="automatic" if spec.nullable else None, **bounds)
    step = abs(spec.default) / 10 if spec.default else 0.01
    return st.number_input(name, value=spec.default, step=float(step), format="%g", key=key, help=help_text,
                           placeholder="automatic" if spec.nullable else None, **bounds)


def strategy_param_inputs(strategy: str, prefix: str = "") -> dict[str, Any]:
    """One widget per declared hyper-parameter of ``strategy`` (``Strategy.param_specs``: number
    inputs bounded by the declared range, checkboxes, choice boxes); returns the changed values,
    which ``build_config`` checks with the same validation as the CLI."""
    specs = strategy_class(strategy).param_specs
    if not specs:
        st.caption(f"`{strategy}` has no hyper-parameters.")
        return {}
    changed: dict[str, Any] = {}
    cols = st.columns(3)
    for i, (name, spec) in enumerate(specs.items()):
        with cols[i % 3]:
            if (strategy, name) == ("rl", "start"):
                value = _start_widget(spec, f"{prefix}sp_{strategy}_{name}")
            else:
                value = _param_widget(name, spec, f"{prefix}sp_{strategy}_{name}")
        if value != spec.default:
            changed[name] = value
    return changed


def finished_analyses() -> dict[str, str]:
    """The finished Sensitivity analyses under the runs folder that hold their result: label → the run
    directory's path (what ``rl``'s ``start`` takes), newest first."""
    from pruner.runs.rundir import SENSITIVITY, Status

    out = {}
    for rd in all_runs(SENSITIVITY):
        if rd.status() == Status.DONE and rd.sensitivity_path.is_file():
            cfg = rd.config() or {}
            out[f"analysis: {rd.name} ({cfg.get('model')} · {cfg.get('data')} · seed {cfg.get('seed', 0)})"] = \
                str(rd.path)
    return out


START_QUERY = "start"


def requested_analysis(analyses: dict[str, str] | None = None) -> str | None:
    """The start label of the finished analysis the URL's ``?start=NAME`` names (the Sensitivity page's
    "Use in a new run"), or None."""
    from pathlib import Path as _Path

    wanted = st.query_params.get(START_QUERY)
    if not wanted:
        return None
    analyses = finished_analyses() if analyses is None else analyses
    return next((label for label, path in analyses.items() if _Path(path).name == wanted), None)


def _start_widget(spec: Param, key: str) -> str:
    """``rl``'s start as a choice: the start names, then the finished Sensitivity analyses (by name,
    with their model, data and seed) instead of a path typed by hand."""
    from pruner.search.rl_pruner import START_NAMES

    analyses = finished_analyses()
    options = [*START_NAMES, *analyses]
    chosen = requested_analysis(analyses)   # "Use in a new run" on the Sensitivity page names one in the URL
    label = st.selectbox("start", options, index=options.index(chosen or spec.default), key=key,
                         help=f"{spec.help} (a finished analysis must share this run's model, data, protocol and "
                              "seed; the Sensitivity page makes one)")
    return analyses.get(label, label)


def budget_problem(config: RunConfig, summary: dict) -> str | None:
    """Why the model of ``summary`` (:func:`model_summary`) cannot reach ``config``'s budget, or ``None``."""
    budget: Budget = config.budget_obj
    try:
        budget.check_reachable((summary.get("floors") or {}).get(budget.kind))
    except PrunerError as exc:
        return str(exc)
    return None


def calibration_problem(config: RunConfig, summary: dict) -> str | None:
    """Why the INT8 calibration of ``config`` cannot be drawn from the fine-tune split, or ``None``."""
    if not config.quantize:
        return None
    return calibration_size_problem(config.calibration_images, summary, where=" (Advanced → Fine-tuning)")


def calibration_size_problem(images: int, summary: dict | None, *, where: str = "") -> str | None:
    """Why ``images`` INT8 calibration images cannot be drawn from the fine-tune split of ``summary`` (a model
    summary, or a finished run's summary: both have ``data.sizes.fit``), or ``None``; ``where``: the field's place."""
    fit = (((summary or {}).get("data") or {}).get("sizes") or {}).get("fit")
    if isinstance(fit, int) and images > fit:
        return (f"INT8 calibration asks for {images:,} images but the fine-tune split has only "
                f"{fit:,}: set “INT8 calibration images”{where} to {fit:,} or fewer")
    return None


# ---------------------------------------------------------------------- building configs
#: the engine's names for a setting (its messages say ``name (--flag) must be ...``) → the forms' labels
PAGE_LABELS = {
    "search_evals": "Candidate evaluations", "search_images": "Search images per candidate",
    "recal_images": "BN recalibration images", "report_images": "Report images", "latency_repeats": "Latency repeats",
    "seed": "Seed", "min_channels": "Min channels per group", "max_prune": "Max fraction pruned per group",
    "latency_batch": "Throughput batch for latency", "workers": "Ray workers",
    "calibration_images": "INT8 calibration images", "round_to": "Align channels to a multiple of",
    "fine-tune epochs": "Fine-tune epochs", "batch size": "Batch size", "batches per epoch": "Batches per epoch",
    "learning rate": "Learning rate", "distillation weight": "Distillation weight",
    "distillation temperature": "Distillation temperature", "warm-up": "Warm-up share of the steps",
    "image_size": "Resize images to", "val_size": "Validation images",
}
_FLAG_WORDS = {"use weights=None for random init": "choose random weights",
               "weights=None to start from random init": "random weights",
               "--search-evals": "the candidate evaluations", "--finetune-epochs": "the fine-tune epochs",
               "--calibration-images": "the INT8 calibration images", "weights=None": "random weights",
               "--trust-checkpoint": "the trust box", "--workers": "the Ray workers", "--max-prune": "the max "
               "fraction pruned", "--budget": "the budget"}


def page_words(message: str) -> str:
    """An engine message in the page's words: the setting named by its form label, not its config name and
    CLI flag (``search_evals (--search-evals) must be ...`` → ``Candidate evaluations must be ...``), and
    the CLI's flags in a remedy named as what to change on the form."""
    def label(m: re.Match) -> str:
        return f"{PAGE_LABELS.get(m.group(1), m.group(1))}"

    out = re.sub(r"\b([a-z_][a-z0-9_ -]*?) \(--[a-z0-9-]+\)", label, message)
    first = out.split(" ", 1)
    if first[0] in PAGE_LABELS:        # a bare config name leading the message (e.g. round_to must be ...)
        out = " ".join([PAGE_LABELS[first[0]], *first[1:]])
    for flag, words in _FLAG_WORDS.items():
        out = out.replace(flag, words)
    return out


def build_config(**fields: Any) -> tuple[RunConfig | None, str | None]:
    """``RunConfig(**fields)`` or the user-facing reason it is invalid (in the page's words)."""
    try:
        return RunConfig(**fields), None  # checks every setting, the strategy's parameters included
    except PrunerError as exc:
        return None, page_words(str(exc))
    except (TypeError, ValueError) as exc:
        return None, f"invalid setting: {exc}"


def finetune_config(epochs: int, max_batches: int | None, batch_size: int, lr: float, kd_weight: float,
                    kd_temperature: float, warmup: float = 0.0) -> FinetuneConfig:
    return FinetuneConfig(epochs=int(epochs), max_batches_per_epoch=int(max_batches) if max_batches else None,
                          batch_size=int(batch_size), lr=float(lr), kd_weight=float(kd_weight),
                          kd_temperature=float(kd_temperature), warmup=float(warmup))


# ---------------------------------------------------------------------- fine-tuning recipes
CUSTOM_RECIPE = "custom"
#: the recipe choice: the form's own values, or a named recipe (pruner.recipes)
RECIPE_CHOICES = [CUSTOM_RECIPE, *RECIPES]
RECIPE_LABELS = {CUSTOM_RECIPE: "custom (the fields below)", **{k: f"{k}: {v}" for k, v in RECIPE_DESCRIPTIONS.items()}}
# FinetuneConfig field -> the New run form's widget key (after the prefix)
_RECIPE_WIDGETS = {"epochs": "ft_epochs", "max_batches_per_epoch": "max_batches", "batch_size": "batch_size",
                   "lr": "lr", "kd_weight": "kd_weight", "kd_temperature": "kd_temperature", "warmup": "warmup"}


def apply_recipe(prefix: str) -> None:
    """The recipe select's callback: the fine-tuning fields take the chosen recipe's settings (the
    user may still edit them: an edited field overrides the recipe, as a typed flag does)."""
    name = st.session_state.get(prefix + "recipe")
    if name in RECIPES:
        for field_name, value in recipe_settings(name).items():
            st.session_state[prefix + _RECIPE_WIDGETS[field_name]] = 0 if value is None else value


def recipe_changes(recipe: str | None, finetune: FinetuneConfig) -> list[str]:
    """The fine-tuning settings that differ from ``recipe``'s: ``epochs 10 -> 3``."""
    if recipe not in RECIPES:
        return []
    got = finetune.to_dict()
    return [f"{k} {v if v is not None else 'all'} -> {got[k] if got[k] is not None else 'all'}"
            for k, v in recipe_settings(recipe).items() if got.get(k) != v]


def finetune_time_text(config: RunConfig, summary: dict) -> str | None:
    """The expected fine-tuning time before Start, from the summary child's timed step, or None."""
    timing, sizes = summary.get("finetune_timing"), (summary.get("data") or {}).get("sizes") or {}
    if config.finetune.epochs <= 0 or not isinstance(timing, dict) or not sizes.get("fit"):
        return None
    try:
        return plan_text(finetune_plan(timing, config.finetune, int(sizes["fit"]))) or None
    except (KeyError, TypeError, ValueError):
        return None


def run_estimate_text(config: RunConfig, summary: dict) -> str | None:
    """The whole run's expected duration before Start (:func:`pruner.runs.estimate.estimate_run`), with its
    parts and what it leaves out; None when the summary has no timings to build it from."""
    from pruner.runs.estimate import estimate_run

    try:
        est = estimate_run(config, summary)
    except (KeyError, TypeError, ValueError):
        return None
    if est.total is None:
        return None
    search = f"{est.search_evaluations or config.search_evals} evaluations"
    if est.search_training is not None:
        search += f" and {est.search_steps:,} training steps, {format_seconds(est.search_training)}"
    parts = [f"{label} {format_seconds(v)}" for label, v in (
        ("loading", est.load), ("unpruned model", est.base), (f"search ({search})", est.search),
        ("fine-tuning", est.finetune), ("report", est.report)) if v]
    text = (f"The whole run is expected to take about {format_seconds(est.total)} on this machine as it is now "
            f"({', '.join(parts)}), from the model summary's timed candidate and training step")
    return text + ("; " + "; ".join(est.notes) if est.notes else "") + "."


#: above these the New run page warns (the run is allowed: the user may mean it)
LONG_FINETUNE_S = 6 * 3600
MANY_EVALUATIONS = 2000


def size_warnings(config: RunConfig, summary: dict, cpu_count: int | None = None) -> list[str]:
    """Warnings for settings that are valid but unrealistic here, each with what it will cost: a fine-tuning
    expected to take hours (from the summary child's timed step), more search or report images than the
    split has, more evaluations than a search needs, more Ray workers on the CPU than there are cores."""
    out: list[str] = []
    sizes = (summary.get("data") or {}).get("sizes") or {}
    timing = summary.get("finetune_timing")
    if config.finetune.epochs > 0 and isinstance(timing, dict) and sizes.get("fit"):
        try:
            seconds = finetune_plan(timing, config.finetune, int(sizes["fit"]))["seconds"]
        except (KeyError, TypeError, ValueError):
            seconds = None
        if seconds is not None and seconds > LONG_FINETUNE_S:
            out.append(f"{config.finetune.epochs:,} fine-tuning epochs are expected to take about "
                       f"{format_seconds(seconds)} on this device; lower the epochs or the batches per epoch")
    for label, asked, have in (("search", config.search_images, sizes.get("search")),
                               ("report", config.report_images, sizes.get("report"))):
        if asked and have and asked > have:
            out.append(f"{asked:,} {label} images asked but the {label} split has {have:,}: all {have:,} are used")
    if config.search_evals and config.search_evals > MANY_EVALUATIONS:
        out.append(f"{config.search_evals:,} candidate evaluations: the search scores each one; at the model "
                   "summary's CPU latency this is hours of work (a few hundred are plenty for every strategy)")
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if config.workers and config.workers > cores and not config.ray_address and \
            not str(config.device or "").startswith("cuda"):
        out.append(f"{config.workers} Ray workers on a machine with {cores} CPU cores: they share the cores, so "
                   f"more than {cores} is no faster and uses {config.workers} copies of the model's memory")
    return out


# ---------------------------------------------------------------------- model summary
SUMMARY_FIELDS = ("model", "weights", "trust_checkpoint", "trust_code", "data", "data_root", "image_size", "protocol",
                  "val_size", "min_channels", "max_prune", "seed", "device")


def summary_key(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    return json.dumps({k: d.get(k) for k in SUMMARY_FIELDS}, sort_keys=True)


# the summary itself is built off the script thread, with a Stop: studio.summaries and widgets.model_summary
#: what holds Start back while the summary is being built (shown as a caption, not an error)
SUMMARY_PENDING = "the model summary is still being built"


# ---------------------------------------------------------------------- a whole form checked
def check_new_run(md: ModelData, *, ft: dict[str, Any], budget: str, strategy: str, strategy_params: dict,
                  trust_cost_code: bool, cost_code: list[str], device: str, name: str, recipe: str | None = None,
                  **fields: Any) -> tuple[RunConfig | None, list[str]]:
    """The New run form's settings as a :class:`RunConfig`, or the messages that say what to fix.

    ``ft``: :func:`finetune_config`'s arguments (the form's fields, which the recipe select filled);
    ``recipe``: the chosen recipe's name, recorded with the run (None or ``custom``: none);
    ``fields``: the other ``RunConfig`` fields. What can
    be checked without a model or a dataset (budget, strategy parameters) is checked even while the
    model or dataset is still missing; the device and the run name always are.
    """
    from pruner.userfile import code_references

    errors = list(md.errors)
    config = None
    # consent (default off) must cover every piece of code the settings name: the uploaded model, any python: cost
    trust_code = (md.trust_code or not code_references(md.model)) and (trust_cost_code or not cost_code)
    try:
        finetune = finetune_config(**ft)
    except PrunerError as exc:
        errors.append(page_words(str(exc)))
        finetune = None
    if finetune is not None and md.model and md.data:
        config, problem = build_config(model=md.model, weights=md.weights, trust_checkpoint=md.trust_checkpoint,
                                       trust_code=trust_code, data=md.data, image_size=md.image_size, budget=budget,
                                       strategy=strategy, strategy_params=strategy_params, finetune=finetune,
                                       recipe=recipe if recipe in RECIPES else None, device=device, **fields)
    elif finetune is not None:
        _, problem = build_config(budget=budget, strategy=strategy, strategy_params=strategy_params,
                                  trust_code=trust_code)
    else:
        problem = None
    errors += [p for p in (problem, check_device(device), run_name_problem(name)) if p]
    return config, errors


def check_analysis(md: ModelData, *, ratios_text: str, device: str, name: str,
                   **fields: Any) -> tuple[RunConfig | None, list[float], list[str]]:
    """The Sensitivity form's settings as a :class:`RunConfig` and its ratios, or what to fix."""
    from .sensitivity_table import parse_ratios

    errors = list(md.errors)
    ratios, problem = parse_ratios(ratios_text)
    config = None
    if md.model and md.data and ratios:
        config, problem = build_config(
            model=md.model, weights=md.weights, trust_checkpoint=md.trust_checkpoint, trust_code=md.trust_code,
            data=md.data, image_size=md.image_size, search_evals=None, max_prune=max(0.9, max(ratios)),
            report_images=None, export=False, finetune=finetune_config(0, None, 64, 0.01, 0.9, 4.0), device=device,
            **fields)
    errors += [p for p in (problem, check_device(device), run_name_problem(name)) if p]
    return config, ratios, errors


def frozen_table(summary: dict) -> list[dict[str, Any]]:
    """The model summary's frozen groups (left unpruned, :mod:`pruner.pruning.opaque`) as table rows."""
    return [{"group": f["name"], "channels": f["channels"], "why": f["reason"], "layers": ", ".join(f["layers"])}
            for f in (summary.get("frozen") or {}).get("groups") or []]


def groups_table(summary: dict) -> list[dict[str, Any]]:
    """The model summary's prunable groups as table rows."""
    return [{"group": g["name"], "channels": g["channels"], "layers": len(g["layers"]),
             "MMACs": round(g["macs"] / 1e6, 2), "params": g["params"], "coupled": bool(g["coupled"])}
            for g in summary.get("groups") or []]
