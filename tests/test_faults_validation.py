"""Early validation (issue 10, item 6): every setting that can be checked without data is checked
before any data or model loads, by one validation (``RunConfig`` / ``FinetuneConfig`` / the
strategies' declared parameters) that the CLI and the New run form share; a budget below the
model's floor is refused as soon as the floor is known.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import pruner.data
import pruner.runs.job
from pruner.budget import Budget, cost_floor
from pruner.cli import main
from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig
from pruner.runs.config import RunConfig
from pruner.search import make_strategy, strategy_class, strategy_names
from pruner.search.base import Param, validate_strategy
from pruner.sensitivity import DEFAULT_RATIOS, check_ratios, parse_ratios

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "resnet20", "--weights", "none", "--data", "digits"]

# (extra CLI arguments of `prune`, the same setting as RunConfig keywords, a piece of the message)
PRUNE_CASES = [
    (["--batch-size", "0"], {"finetune": {"batch_size": 0}}, "batch size (--batch-size) must be an integer >= 1"),
    (["--seed", "-1"], {"seed": -1}, "seed (--seed) must be an integer in [0, 4294967295]"),
    (["--report-images", "0"], {"report_images": 0}, "--report-images) must be an integer >= 1"),
    (["--max-batches-per-epoch", "0"], {"finetune": {"max_batches_per_epoch": 0}}, "--max-batches-per-epoch"),
    (["--finetune-epochs", "-1"], {"finetune": {"epochs": -1}}, "integer >= 0"),
    (["--lr", "0"], {"finetune": {"lr": 0.0}}, "learning rate (--lr) must be a number > 0"),
    (["--kd-temperature", "0"], {"finetune": {"kd_temperature": 0.0}}, "must be a number > 0"),
    (["--kd-weight", "1.5"], {"finetune": {"kd_weight": 1.5}}, "must be a number in [0, 1]"),
    (["--image-size", "4"], {"image_size": 4}, "image_size (--image-size) must be an integer in [8, "),
    (["--image-size", "100000"], {"image_size": 100000}, "image_size (--image-size)"),
    (["--search-evals", "0"], {"search_evals": 0}, "--search-evals"),
    (["--search-images", "0"], {"search_images": 0}, "--search-images"),
    (["--recal-images", "0"], {"recal_images": 0}, "--recal-images"),
    (["--val-size", "0"], {"val_size": 0}, "--val-size"),
    (["--max-prune", "1"], {"max_prune": 1.0}, "must be a number in (0, 1)"),
    (["--device", "tpu"], {"device": "tpu"}, "unknown device 'tpu'"),
    (["--strategy", "nope"], {"strategy": "nope"}, "unknown strategy 'nope'; choose one of"),
    (["--set", "bogus_knob=1"], {"strategy_params": {"bogus_knob": 1}}, "has no parameter(s) bogus_knob; it takes"),
    (["--set", "noise=-3"], {"strategy_params": {"noise": -3}}, "parameter noise must be a number >= 0, got -3"),
    (["--set", "steps=2.5"], {"strategy_params": {"steps": 2.5}}, "parameter steps must be an integer"),
    (["--set", "epsilon=1.5"], {"strategy_params": {"epsilon": 1.5}}, "epsilon must be a number in [0, 1]"),
    (["--set", "importance=tallest"], {"strategy_params": {"importance": "tallest"}},
     "importance must be one of keep, l1, l2, taylor"),
    (["--strategy", "constrained", "--set", "cost=joules"], {"strategy": "constrained",
                                                             "strategy_params": {"cost": "joules"}}, "python:"),
    (["--strategy", "random", "--set", "concentration=0"], {"strategy": "random",
                                                            "strategy_params": {"concentration": 0}}, "> 0"),
    (["--budget", "flops=0"], {"budget": "flops=0"}, "outside (0, 1)"),
]


@pytest.fixture
def no_data(monkeypatch):
    """Loading any data is a test failure (it would also show as `internal error`, exit status 1)."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the settings were checked")

    monkeypatch.setattr(pruner.runs.job, "load_data", refuse)
    monkeypatch.setattr(pruner.data, "load_data", refuse)


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if "error:" in line]


def assert_refused_early(code: int, lines: list[str], needle: str, out: Path) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle in lines[0], lines[0]
    assert not out.exists(), "a run directory was written before the settings were checked"


# ---------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("args,_kw,needle", PRUNE_CASES, ids=[" ".join(c[0]) for c in PRUNE_CASES])
def test_prune_refuses_bad_settings_before_any_data(no_data, capsys, tmp_path, args, _kw, needle):
    code, lines = run_cli(capsys, "prune", *TINY, *args, "--out", tmp_path / "run")
    assert_refused_early(code, lines, needle, tmp_path / "run")


@pytest.mark.parametrize("ratios,needle", [
    ("abc", "'abc' is not a number"), ("1.5", "1.5 is out of range"), ("0,0.5", "0 is out of range"),
    ("", "at least one"), ("nan", "out of range"), (",".join(f"0.{i:02d}" for i in range(1, 30)), "too many"),
])
def test_sensitivity_refuses_bad_ratios_before_any_data(no_data, capsys, tmp_path, ratios, needle):
    code, lines = run_cli(capsys, "sensitivity", *TINY, "--ratios", ratios, "--out", tmp_path / "sens")
    assert_refused_early(code, lines, needle, tmp_path / "sens")


@pytest.mark.parametrize("flag", [["--budget", "flops=0.5"], ["--strategy", "uniform"], ["--set", "steps=2"],
                                  ["--search-evals", "3"]])
def test_sensitivity_takes_no_search_settings(no_data, capsys, tmp_path, flag):
    code, lines = run_cli(capsys, "sensitivity", *TINY, *flag, "--out", tmp_path / "sens")
    assert code == 2 and len(lines) == 1 and "unrecognized arguments" in lines[0] and flag[0] in lines[0], lines
    assert not (tmp_path / "sens").exists()


def test_sensitivity_seed_and_eval_seed_checked_first(no_data, capsys, tmp_path):
    code, lines = run_cli(capsys, "sensitivity", *TINY, "--seed", "-1", "--out", tmp_path / "sens")
    assert_refused_early(code, lines, "seed (--seed)", tmp_path / "sens")
    # eval checks its settings before it opens the checkpoint (which does not exist here)
    code, lines = run_cli(capsys, "eval", *TINY, "--seed", "-1", "--checkpoint", tmp_path / "missing.pt")
    assert code == 2 and len(lines) == 1 and "seed (--seed)" in lines[0], lines


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pruner", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


@pytest.mark.parametrize("argv", [["prune", *TINY, "--batch-size", "0"], ["sensitivity", *TINY, "--ratios", "abc"]],
                         ids=["batch-size", "ratios"])
def test_real_cli_one_line_error_and_no_run_directory(tmp_path, argv):
    """The real entry point (a fresh process): exit status 2, exactly one `error:` line, no run directory
    (so no `loading data` event)."""
    res = cli(*argv, "--out", tmp_path / "run")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- the engine's validation (form and API)
def _config(kw: dict) -> RunConfig:
    kw = dict(kw)
    if "finetune" in kw:
        kw["finetune"] = FinetuneConfig(**kw["finetune"])
    return RunConfig(**kw)


@pytest.mark.parametrize("_args,kw,needle", PRUNE_CASES, ids=[" ".join(c[0]) for c in PRUNE_CASES])
def test_config_and_form_refuse_the_same_settings(_args, kw, needle):
    from studio import forms

    with pytest.raises(PrunerError) as exc:
        _config(kw)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    if "finetune" in kw:  # the form builds fine-tuning settings first, with the same class
        with pytest.raises(PrunerError, match="must be"):
            FinetuneConfig(**kw["finetune"])
    else:
        config, problem = forms.build_config(**kw)
        assert config is None and problem == forms.page_words(str(exc.value))   # the same check, in the page's words


def test_valid_settings_are_normalised():
    cfg = RunConfig(strategy="rl", strategy_params={"steps": 2.0, "noise": 1, "importance": "l2"}, device="CPU",
                    finetune={"epochs": 1.0, "batch_size": 32})
    assert cfg.strategy_params == {"steps": 2, "noise": 1.0, "importance": "l2"}
    assert isinstance(cfg.strategy_params["steps"], int) and isinstance(cfg.strategy_params["noise"], float)
    assert cfg.device == "cpu" and cfg.finetune.epochs == 1 and isinstance(cfg.finetune.epochs, int)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    cfg = RunConfig(strategy="constrained", strategy_params={"enforce_budget": "false", "tolerance": None,
                                                             "cost": "python:/x.py:f"}, trust_code=True)
    assert cfg.strategy_params["enforce_budget"] is False


@pytest.mark.parametrize("bad", [True, "3", None, float("inf")])
def test_wrong_types_are_refused(bad):
    with pytest.raises(PrunerError, match="seed"):
        RunConfig(seed=bad)
    with pytest.raises(PrunerError, match="steps"):
        validate_strategy("rl", {"steps": bad})


# ---------------------------------------------------------------------- strategy parameters, declared once
def _just_outside(spec: Param) -> list:
    """Values just outside the declared range (from the declaration itself)."""
    out = []
    step = 1 if spec.kind is int else 1e-6
    if spec.low is not None:
        out.append(spec.low if spec.low_open else spec.low - step)
    if spec.high is not None:
        out.append(spec.high if spec.high_open else spec.high + step)
    return out


@pytest.mark.parametrize("name", strategy_names())
def test_every_declared_parameter_is_checked(name):
    cls = strategy_class(name)
    assert cls.defaults() == {k: p.default for k, p in cls.param_specs.items()}
    assert make_strategy(name, **cls.defaults()).params == cls.defaults()
    for key, spec in cls.param_specs.items():
        assert spec.help, f"{name}.{key} has no help"
        for value in _just_outside(spec):
            with pytest.raises(PrunerError, match=f"parameter {key} must be"):
                make_strategy(name, **{key: value})
        if spec.kind in (int, float):
            with pytest.raises(PrunerError, match=key):
                validate_strategy(name, {key: "many"})
            inside = [v for v in (spec.low, spec.high) if v is not None]
            for v in inside:  # a closed end is allowed (an open one was refused above)
                if not ((v == spec.low and spec.low_open) or (v == spec.high and spec.high_open)):
                    assert validate_strategy(name, {key: v})[key] == spec.kind(v)
        if spec.choices:
            for choice in spec.choices:
                assert validate_strategy(name, {key: choice})[key] == choice
            with pytest.raises(PrunerError, match="must be one of"):
                validate_strategy(name, {key: "not-a-choice"})
    with pytest.raises(PrunerError, match="it takes"):
        validate_strategy(name, {"bogus_knob": 1})


def test_param_declarations_are_checked():
    with pytest.raises(PrunerError):
        Param(-1, int, "bad default", low=0)
    with pytest.raises(TypeError):
        Param([1], list, "lists are not a parameter type")
    assert Param(0.5, float, "p", low=0.0, high=1.0, low_open=True).range_text() == "a number in (0, 1]"
    assert Param(None, float, "t", low=0.0, nullable=True).check("t", None) is None


def test_strategies_command_prints_default_range_and_help(capsys):
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name in strategy_names():
        assert f"{name}:" in out
        for key, spec in strategy_class(name).param_specs.items():
            line = next(l for l in out.splitlines() if l.strip().startswith(f"--set {key}=") and spec.help in l)
            assert spec.range_text() in line
    assert "--set noise=0.15 " in out and "a number >= 0" in out


# ---------------------------------------------------------------------- sensitivity ratios
def test_ratio_parsing():
    assert parse_ratios("0.5, 0.2;25%") == [0.2, 0.25, 0.5]
    assert check_ratios(DEFAULT_RATIOS) == list(DEFAULT_RATIOS)
    for bad in ([1.5], [0.0], [True], ["0.5"], []):
        with pytest.raises(PrunerError):
            check_ratios(bad)


# ---------------------------------------------------------------------- budgets below the model's floor
def test_budget_floor():
    from pruner.models.cifar_resnet import cifar_resnet
    from pruner.pruning.space import PruningSpace

    space = PruningSpace(cifar_resnet("resnet20").eval(), (3, 32, 32), max_prune=0.9)
    floor = cost_floor(space, "flops")
    assert 0 < floor < 0.1
    assert floor == pytest.approx(space.predict(counts=[space.min_keep(g) for g in space.groups])[0]
                                  / space.base_macs)
    assert cost_floor(space, "latency") is None
    Budget("flops", floor + 0.01).check_reachable(floor)
    Budget("latency", 0.001).check_reachable(None)
    with pytest.raises(PrunerError, match="cannot be reached.*at least"):
        Budget("flops", floor / 2).check_reachable(floor)


def test_unreachable_budget_fails_before_the_base_report(tmp_path, capsys):
    from pruner.runs.rundir import RunDir

    out = tmp_path / "run"
    code, lines = run_cli(capsys, "prune", *TINY, "--budget", "flops=0.001", "--search-evals", "2",
                          "--no-export", "--out", out)
    assert code == 2 and len(lines) == 1 and "cannot be reached" in lines[0], lines
    assert RunDir(out).summary()["status"] == "failed"
    assert not RunDir(out).events("base") and not RunDir(out).events("candidate")
    statuses = [e["status"] for e in RunDir(out).events("status")]
    assert "measuring base model" not in statuses and "searching" not in statuses


# ---------------------------------------------------------------------- the New run form
@pytest.fixture
def new_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(tmp_path / "runs"))
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.selectbox(key="nr_zoo_model").set_value("resnet20")
    at.selectbox(key="nr_data").set_value("digits")
    at.radio(key="nr_weights").set_value("random")
    yield at.run()
    st.cache_resource.clear()
    st.cache_data.clear()


def errors_of(at: AppTest) -> list[str]:
    assert not at.exception, [e.message for e in at.exception]
    return [str(e.value) for e in at.error]


def test_form_start_disabled_for_bad_strategy_value_and_unreachable_budget(new_run):
    at = new_run
    assert not errors_of(at) and not at.button(key="nr_start").disabled

    at.selectbox(key="nr_strategy").set_value("constrained").run()
    # the widgets come from the declaration: a choice box for a choice, a bounded number input
    assert at.selectbox(key="nr_sp_constrained_init").options == ["uniform", "sensitivity", "full"]
    assert at.number_input(key="nr_sp_constrained_batch").min == 2
    assert at.checkbox(key="nr_sp_constrained_enforce_budget").value is True
    at.text_input(key="nr_sp_constrained_cost").set_value("joules").run()
    assert any("parameter cost must be one of" in m for m in errors_of(at)), errors_of(at)
    assert at.button(key="nr_start").disabled
    at.text_input(key="nr_sp_constrained_cost").set_value("flops").run()
    assert not errors_of(at) and not at.button(key="nr_start").disabled

    at.number_input(key="nr_budget_value").set_value(0.001).run()
    assert any("cannot be reached" in m and "at least" in m for m in errors_of(at)), errors_of(at)
    assert at.button(key="nr_start").disabled
    at.number_input(key="nr_budget_value").set_value(0.5).run()
    assert not errors_of(at) and not at.button(key="nr_start").disabled
