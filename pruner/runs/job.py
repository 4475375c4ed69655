"""The pipeline of one run: search → fine-tune with distillation → test → ONNX export and check.

:func:`run_job` is the single code path behind ``python -m pruner prune``, the Python API
and the studio's background jobs. It writes the run directory as it goes, stops within
one candidate evaluation (or one fine-tuning batch) when ``should_stop`` says so, and with
``resume=True`` continues an interrupted run: finished search evaluations are replayed
from ``events.jsonl`` without re-evaluating, the finished search is read from
``state/search.json``, and fine-tuning restarts from its last epoch checkpoint.
"""

from __future__ import annotations

import copy
import csv
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .. import __version__
from ..data import DataBundle, batches, load_data
from ..errors import CancelledError, PrunerError
from ..evaluate import accuracy, recalibrate_bn
from ..export import export_onnx, ort_latency_ms, save_pruned_program
from ..finetune import finetune
from ..measure import count_cost, latency_ms, relative_latency
from ..models import build_model, parse_model_spec
from ..pruning.importance import channel_scores, ranking_from_scores
from ..pruning.space import PruningRecord, PruningSpace, apply_record
from ..search import SearchContext, make_strategy, run_search
from ..search.evaluator import Candidate, Evaluator, EvaluatorSettings
from ..settings import resolve_device
from .config import RunConfig
from .rundir import RunDir, read_json, write_json_atomic

StopFn = Callable[[], bool]
CHECKPOINT_FORMAT = "pruner-checkpoint-v1"


class Session:
    """Everything a run loads once: data, base model, pruning space, importance ranking."""

    def __init__(self, config: RunConfig, run: RunDir | None = None):
        self.config = config
        self.run = run
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.log("status", status="loading data")
        self.data: DataBundle = load_data(config.data, config.data_root, protocol=config.protocol,
                                          val_size=config.val_size, seed=config.seed, image_size=config.image_size)
        self.log("status", status="loading model")
        self.spec = parse_model_spec(config.model, num_classes=self.data.num_classes, weights=config.weights,
                                     trust_checkpoint=config.trust_checkpoint)
        self.model: nn.Module = build_model(self.spec).eval()
        self._check_classes()
        self.log("status", status="analysing dependency graph")
        self.space = PruningSpace(self.model, self.data.input_size, min_channels=config.min_channels,
                                  max_prune=config.max_prune)
        self.model.to(self.device)
        self.scores = channel_scores(self.model, self.space, config.importance, seed=config.seed,
                                     batches=self._taylor_batches() if config.importance == "taylor" else None)
        self.ranking = ranking_from_scores(self.scores)

    def _check_classes(self) -> None:
        with torch.no_grad():
            out = self.model(torch.zeros(1, *self.data.input_size))
        if out.shape[-1] != self.data.num_classes:
            raise PrunerError(f"the model outputs {out.shape[-1]} classes but the dataset has {self.data.num_classes}; "
                              "pick matching weights or dataset")

    def _taylor_batches(self):
        gen = torch.Generator().manual_seed(self.config.seed)
        it = batches(self.data.fit.subset(256), 64, mean=self.data.mean, std=self.data.std, device=self.device,
                     shuffle=True, generator=gen)
        return list(it)

    def log(self, kind: str, **fields) -> None:
        if self.run is not None:
            self.run.event(kind, **fields)

    def evaluator(self, *, max_evals: int | None, should_stop: StopFn | None = None,
                  on_candidate: Callable[[Candidate], None] | None = None) -> Evaluator:
        c = self.config
        return Evaluator(self.model, self.space, self.data, self.ranking, c.budget_obj, device=self.device,
                         settings=EvaluatorSettings(search_images=c.search_images, recal_images=c.recal_images,
                                                    latency_repeats=c.latency_repeats),
                         max_evals=max_evals, should_stop=should_stop, on_candidate=on_candidate)

    def build_pruned(self, counts: list[int]) -> tuple[nn.Module, PruningRecord]:
        pruned, record = self.space.prune(self.model, counts, self.ranking)
        recalibrate_bn(pruned, self.data.fit, mean=self.data.mean, std=self.data.std, device=self.device,
                       images=self.config.recal_images)
        return pruned, record

    def report(self, model: nn.Module, *, onnx_path: Path | None = None, reference: nn.Module | None = None) -> dict:
        """Test-split accuracy, cost, and CPU latency (PyTorch and, with ``onnx_path``, ONNX Runtime);
        with ``reference`` (the unpruned model) also ``latency_vs_base``, the PyTorch CPU latency
        relative to it, timed in interleaved pairs (robust to drifting machine speed)."""
        report_set = self.data.report
        if self.config.report_images:
            report_set = report_set.subset(min(self.config.report_images, len(report_set)))
        acc = accuracy(model, report_set, mean=self.data.mean, std=self.data.std, device=self.device)
        cpu_model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
        cost = count_cost(cpu_model, self.data.input_size)
        out = {"macs": cost.macs, "params": cost.params, "top1": acc["top1"], "top5": acc["top5"],
               "report_images": len(report_set),
               "latency_ms": latency_ms(cpu_model, self.data.input_size, batch_size=1, device="cpu",
                                        repeats=self.config.latency_repeats)}
        out["ort_latency_ms"] = (ort_latency_ms(onnx_path, self.data.input_size, batch_size=1,
                                                repeats=self.config.latency_repeats) if onnx_path else None)
        if reference is not None:
            out["latency_vs_base"] = self.relative_latency(cpu_model, reference, device="cpu")
        return out

    def relative_latency(self, model: nn.Module, reference: nn.Module, *, device: torch.device | str) -> float:
        """Batch-1 latency of ``model`` over ``reference`` on ``device``, timed in interleaved pairs."""
        return relative_latency(model, reference, self.data.input_size, batch_size=1, device=device,
                                repeats=self.config.latency_repeats)["ratio"]


def _layers(base: nn.Module, pruned: nn.Module) -> list[dict]:
    after = dict(pruned.named_modules())
    rows = []
    for name, m in base.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            p = after.get(name)
            before_ch = getattr(m, "out_channels", getattr(m, "out_features", None))
            after_ch = getattr(p, "out_channels", getattr(p, "out_features", None)) if p is not None else None
            rows.append({"name": name, "before": before_ch, "after": after_ch})
    return rows


def save_checkpoint(path: Path, session: Session, pruned: nn.Module, record: PruningRecord) -> None:
    """A checkpoint that rebuilds the pruned model with this package (see :func:`load_checkpoint`)."""
    state = {k: v.detach().cpu() for k, v in pruned.state_dict().items()}
    torch.save({
        "format": CHECKPOINT_FORMAT, "model_spec": asdict(session.spec), "record": record.to_dict(),
        "state_dict": state, "input_size": list(session.data.input_size), "mean": list(session.data.mean),
        "std": list(session.data.std), "classes": list(session.data.classes),
    }, path)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a pruned model from :func:`save_checkpoint`'s file (base architecture + replayed surgery)."""
    from ..models import ModelSpec

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PrunerError(f"checkpoint {path} does not exist") from None
    except Exception as exc:
        raise PrunerError(f"could not read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise PrunerError(f"{path} is not a pruned checkpoint written by this tool")
    spec = ModelSpec(**{**ckpt["model_spec"], "weights": None})
    model = build_model(spec)
    model = apply_record(model, PruningRecord.from_dict(ckpt["record"]), ckpt["input_size"], inplace=True)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def _write_candidates_csv(path: Path, run: RunDir, names: list[str]) -> None:
    rows = run.events("candidate")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["candidate_id", "step", "top1", "reward", "cost", "macs", "params", "latency_ms", *names])
        for e in rows:
            w.writerow([e.get("candidate_id"), e.get("step"), e.get("top1"), e.get("reward"), e.get("cost"),
                        e.get("macs"), e.get("params"), e.get("latency_ms"), *e.get("keep_ratios", [])])


def run_job(config: RunConfig, out: str | Path, *, resume: bool = False, should_stop: StopFn | None = None) -> dict:
    """Run the whole pipeline into the run directory ``out``; returns the summary (also on failure)."""
    run = RunDir(out)
    if resume and not run.config_path.exists():
        raise PrunerError(f"nothing to resume in {out}: it has no config.json")
    if resume and run.summary() and run.summary().get("status") == "done":
        return run.summary()
    if resume:
        config = RunConfig.from_dict(run.config())
    run.create(config.to_dict(), resume=resume)
    if resume and run.summary_path.exists():
        run.summary_path.unlink()  # an interrupted/cancelled run is being continued
    stop = should_stop or (lambda: False)
    t_start = time.time()
    summary: dict = {"status": "running", "error": None, "version": __version__, "protocol": config.protocol,
                     "budget": {"kind": config.budget_obj.kind, "target": config.budget_obj.target}}
    best: Candidate | None = None
    evaluator = None
    try:
        run.event("status", status="started", resume=resume)
        session = Session(config, run)
        data = session.data
        summary["data"] = data.describe()
        summary["preprocess"] = {"mean": list(data.mean), "std": list(data.std), "input_size": list(data.input_size)}
        summary["groups"] = [g.to_dict() for g in session.space.groups]
        run.event("status", status="measuring base model")
        base_state = run.state_dir / "base.json"
        base = read_json(base_state) if resume else None
        if base is None:
            base = session.report(session.model)
            write_json_atomic(base_state, base)
        summary["base"] = base
        run.event("base", groups=[g.to_dict() for g in session.space.groups], **base)

        # ---------------------------------------------------------------- search
        search_state = run.state_dir / "search.json"
        found = read_json(search_state) if resume else None
        if found is None:
            run.event("status", status="searching", strategy=config.strategy)
            evaluator = session.evaluator(max_evals=config.search_evals, should_stop=stop,
                                          on_candidate=lambda c: run.event("candidate", **c.to_event()))
            if resume:
                evaluator.preload(run.events("candidate"))
            strategy = make_strategy(config.strategy, **config.strategy_params)
            ctx = SearchContext(evaluator, seed=config.seed, scores=session.scores,
                                emit=lambda kind, **f: run.event(kind, **f))
            t0 = time.perf_counter()
            best = run_search(strategy, ctx)
            found = {"counts": best.counts, "candidate_id": best.id, "best_val_top1": best.top1,
                     "evaluations": evaluator.evaluations, "seconds": time.perf_counter() - t0,
                     "cost": best.cost, "verified_cost": best.meta.get("verified_latency"),
                     "timing": evaluator.timing, "answer_is_start": bool(best.meta.get("is_start")),
                     "start_source": best.meta.get("start_source")}
            if evaluator.model_version > 0:  # the strategy trained the weights (joint): prune those
                torch.save({"state_dict": {k: v.detach().cpu() for k, v in evaluator.model.state_dict().items()},
                            "ranking": [r.cpu() for r in evaluator.ranking]}, run.state_dir / "search_model.pt")
                found["model"] = "state/search_model.pt"
            write_json_atomic(search_state, found)
        if found.get("model"):
            saved = torch.load(run.path / found["model"], map_location=session.device, weights_only=True)
            session.model.load_state_dict(saved["state_dict"])
            session.ranking = list(saved["ranking"])
        summary["search"] = {"strategy": config.strategy, "evaluations": found["evaluations"],
                             "best_val_top1": found["best_val_top1"], "seconds": found["seconds"],
                             "params": make_strategy(config.strategy, **config.strategy_params).params,
                             "answer_is_start": bool(found.get("answer_is_start")),
                             "start_source": found.get("start_source")}
        if summary["search"]["answer_is_start"]:
            summary["search"]["note"] = (f"the answer is the search's starting point ({found.get('start_source')}): no "
                                         f"other candidate scored higher in {found['evaluations']} evaluations")
        run.event("status", status="search done", **summary["search"])

        # ---------------------------------------------------------------- fine-tune
        pruned, record = session.build_pruned(found["counts"])
        ft_dir = run.state_dir / "finetune"
        done_epochs = sorted(int(p.stem.split("-")[1]) for p in ft_dir.glob("epoch-*.pt")) if resume else []
        if config.finetune.epochs > 0:
            run.event("status", status="fine-tuning", epochs=config.finetune.epochs)
            teacher = copy.deepcopy(session.model)
            val = data.search.subset(min(config.search_images, len(data.search)))
            summary["finetune"] = finetune(
                pruned, data, config.finetune, teacher=teacher, device=session.device, eval_data=val,
                on_epoch=lambda rec: run.event("epoch", **rec), checkpoint_dir=ft_dir,
                start_epoch=done_epochs[-1] if done_epochs else 0, should_stop=stop)
        pruned.eval()

        # ---------------------------------------------------------------- export and report
        run.event("status", status="exporting")
        art = run.artifacts_dir
        onnx_path = art / "model.onnx"
        artifacts: dict = {}
        if config.export:
            sample_x, _ = next(batches(data.report.subset(8), 8, mean=data.mean, std=data.std))
            rep = export_onnx(pruned, onnx_path, input_size=data.input_size, mean=data.mean, std=data.std,
                              class_names=data.classes, sample=sample_x,
                              metadata={"model": config.model, "budget": config.budget, "strategy": config.strategy})
            summary["onnx_max_abs_diff"] = rep.max_abs_diff
            save_pruned_program(pruned, art / "pruned.pt2", input_size=data.input_size)
            artifacts.update({"onnx": "artifacts/model.onnx", "program": "artifacts/pruned.pt2"})
        save_checkpoint(art / "checkpoint.pt", session, pruned, record)
        artifacts["checkpoint"] = "artifacts/checkpoint.pt"
        run.event("status", status="evaluating on the report split")
        summary["pruned"] = session.report(pruned, onnx_path=onnx_path if config.export else None,
                                           reference=session.model)
        if base.get("ort_latency_ms") is None and config.export:
            base_onnx = run.state_dir / "base.onnx"
            sample_x, _ = next(batches(data.report.subset(8), 8, mean=data.mean, std=data.std))
            export_onnx(session.model, base_onnx, input_size=data.input_size, mean=data.mean, std=data.std,
                        class_names=data.classes, sample=sample_x)
            base["ort_latency_ms"] = ort_latency_ms(base_onnx, data.input_size, batch_size=1,
                                                    repeats=config.latency_repeats)
            base_onnx.unlink(missing_ok=True)
            write_json_atomic(base_state, base)
        if config.budget_obj.kind == "latency" and session.device.type != "cpu":
            # the budget is on the run's device (where the search measured it), not the report's CPU
            summary["budget"]["achieved"] = session.relative_latency(pruned, session.model, device=session.device)
        else:
            summary["budget"]["achieved"] = _achieved(config, summary)
        summary["layers"] = _layers(session.model, pruned)
        _write_candidates_csv(art / "candidates.csv", run, session.space.names)
        artifacts["candidates"] = "artifacts/candidates.csv"
        summary["artifacts"] = artifacts
        summary["status"] = "done"
    except CancelledError:
        summary["status"] = "cancelled"
        summary["error"] = "cancelled by the user"
        if evaluator is not None:
            feasible = [c for c in evaluator.candidates if c.cost <= config.budget_obj.target * 1.05]
            b = max(feasible, key=lambda c: c.top1) if feasible else None
            summary["search"] = {"strategy": config.strategy, "evaluations": evaluator.evaluations,
                                 "best_val_top1": b.top1 if b else None, "best_counts": b.counts if b else None,
                                 "best_candidate": b.id if b else None, "seconds": time.time() - t_start,
                                 "note": None if b else "no candidate meeting the budget was evaluated before cancel"}
    except PrunerError as exc:
        summary["status"] = "failed"
        summary["error"] = str(exc)
    except Exception as exc:  # a bug: keep the traceback in the log, a one-line error in the summary
        summary["status"] = "failed"
        summary["error"] = f"internal error: {type(exc).__name__}: {exc}"
        run.event("log", level="error", message=traceback.format_exc())
    summary["seconds"] = time.time() - t_start
    run.event("status", status=summary["status"], error=summary["error"])
    run.write_summary(summary)
    return summary


def _achieved(config: RunConfig, summary: dict) -> float:
    """The budget's kind, pruned over base: exact for MACs and params; for latency the paired
    CPU measurement (two separately timed medians drift apart with the machine's speed)."""
    kind = config.budget_obj.kind
    if kind == "latency":
        return summary["pruned"]["latency_vs_base"]
    key = {"flops": "macs", "params": "params"}[kind]
    return summary["pruned"][key] / summary["base"][key]


def run_sensitivity(config: RunConfig, out: str | Path, *, ratios=None, should_stop: StopFn | None = None) -> dict:
    """Per-group sensitivity analysis into the run directory ``out`` (``sensitivity.json``)."""
    from ..sensitivity import DEFAULT_RATIOS, analyse

    run = RunDir(out)
    run.create({**config.to_dict(), "analysis": "sensitivity", "ratios": list(ratios or DEFAULT_RATIOS)})
    t_start = time.time()
    summary: dict = {"status": "running", "error": None, "analysis": "sensitivity", "protocol": config.protocol}
    try:
        run.event("status", status="started")
        session = Session(config, run)
        evaluator = session.evaluator(max_evals=None, should_stop=should_stop)
        run.event("status", status="analysing sensitivity")
        result = analyse(evaluator, ratios or DEFAULT_RATIOS,
                         progress=lambda done, total, point: run.event("sensitivity", done=done, total=total, **point))
        write_json_atomic(run.path / "sensitivity.json", result.to_dict())
        summary.update({"status": "done", "sensitivity": "sensitivity.json", "evaluations": result.evaluations,
                        "base_top1": result.base_top1, "timing": evaluator.timing})
    except CancelledError:
        summary.update({"status": "cancelled", "error": "cancelled by the user"})
    except PrunerError as exc:
        summary.update({"status": "failed", "error": str(exc)})
    except Exception as exc:
        summary.update({"status": "failed", "error": f"internal error: {type(exc).__name__}: {exc}"})
        run.event("log", level="error", message=traceback.format_exc())
    summary["seconds"] = time.time() - t_start
    run.event("status", status=summary["status"], error=summary["error"])
    run.write_summary(summary)
    return summary
