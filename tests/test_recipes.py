"""Fine-tuning recipes (pruner/recipes.py) and the expected fine-tuning time before a run: the recipe
choices in the API, the CLI and the New run form, explicit settings overriding them, the warm-up +
cosine schedule, the timed step and the plan shown before Start. Real models, data and jobs."""

import math

import pytest
import torch

from pruner.cli import _config, build_parser
from pruner.data import load_data
from pruner.errors import PrunerError
from pruner.finetune import FinetuneConfig, expected_seconds, finetune, finetune_plan, lr_factor, time_steps
from pruner.models.cifar_resnet import cifar_resnet
from pruner.progress import plan_text
from pruner.recipes import RECIPES, recipe_settings
from pruner.runs.config import RunConfig
from pruner.runs.job import run_job
from pruner.runs.rundir import RunDir


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", val_size=200, seed=0)


# ---------------------------------------------------------------------- the recipes in the API
def test_each_recipe_sets_the_fine_tuning_and_a_dict_overrides_it():
    for name, settings in RECIPES.items():
        ft = RunConfig(recipe=name).finetune
        assert {k: getattr(ft, k) for k in settings} == settings, name
    assert RunConfig(recipe="standard").finetune.epochs == 10
    cfg = RunConfig(recipe="standard", finetune={"epochs": 3, "kd_weight": 0.5})
    assert (cfg.finetune.epochs, cfg.finetune.kd_weight, cfg.finetune.warmup) == (3, 0.5, 0.1)
    # a FinetuneConfig is taken whole; no recipe: the engine's defaults
    assert RunConfig(recipe="full", finetune=FinetuneConfig(epochs=2)).finetune.epochs == 2
    assert RunConfig().finetune == FinetuneConfig()
    # the record reads back to the same settings
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_recipes_and_settings_are_one_line_errors():
    for bad in ("fast", 3, ["quick"]):
        with pytest.raises(PrunerError, match="unknown fine-tuning recipe .* use one of quick, standard, full"):
            RunConfig(recipe=bad)
    with pytest.raises(PrunerError, match="unknown fine-tuning settings: epoch"):
        RunConfig(recipe="quick", finetune={"epoch": 3})
    for bad in (-0.1, 1.0, "a"):
        with pytest.raises(PrunerError, match="warm-up share"):
            FinetuneConfig(warmup=bad)
    with pytest.raises(PrunerError):
        recipe_settings("none")


# ---------------------------------------------------------------------- the recipes on the command line
def _cli_config(*argv):
    argv = ["prune", "--model", "resnet20", "--data", "digits", "--out", "x", *argv]
    args = build_parser().parse_args(argv)
    args.argv = argv
    return _config(args)


def test_cli_recipe_with_typed_flags_overriding_it():
    cfg = _cli_config("--recipe", "standard", "--finetune-epochs", "2", "--batch-size", "64", "--seed", "4")
    assert cfg.recipe == "standard"
    ft = cfg.finetune
    assert (ft.epochs, ft.batch_size, ft.warmup, ft.lr, ft.seed) == (2, 64, 0.1, 0.01, 4)
    # a flag typed with the engine's default value still overrides the recipe
    assert _cli_config("--recipe", "full", "--warmup", "0").finetune.warmup == 0.0
    # without a recipe the flags' defaults are the engine's
    plain = _cli_config()
    assert plain.recipe is None and plain.finetune.epochs == FinetuneConfig().epochs


def test_cli_refuses_an_unknown_recipe(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["prune", "--model", "resnet20", "--data", "digits", "--out", "x",
                                   "--recipe", "fast"])
    assert exc.value.code == 2
    assert "invalid choice: 'fast' (choose from 'quick', 'standard', 'full')" in capsys.readouterr().err


# ---------------------------------------------------------------------- the schedule
def test_warm_up_rises_linearly_then_decays_on_a_cosine():
    f = lr_factor(100, 0.1)
    rise = [f(s) for s in range(10)]
    assert rise == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(99) < 0.001
    assert all(a >= b for a, b in zip([f(s) for s in range(10, 100)], [f(s) for s in range(11, 100)]))
    # no warm-up: torch's cosine annealing, step for step
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    g = lr_factor(50, 0.0)
    for step in range(50):
        assert g(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9)
        opt.step()
        sched.step()


def test_finetune_follows_the_warm_up(digits):
    torch.manual_seed(0)
    cfg = FinetuneConfig(epochs=4, batch_size=32, max_batches_per_epoch=5, warmup=0.5, lr=0.1)
    hist = finetune(cifar_resnet("resnet20"), digits, cfg, teacher=cifar_resnet("resnet20"))
    lrs = [h["lr"] for h in hist]   # after each epoch's last step: rising for 2 epochs, then falling to zero
    assert lrs[0] < lrs[1] and lrs[1] > lrs[2] > lrs[3]
    assert lrs[1] == pytest.approx(0.1 * lr_factor(20, 0.5)(10))
    assert lrs[3] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------- the expected time
def test_time_steps_leaves_the_model_untouched_and_scales_per_image():
    model = cifar_resnet("resnet20").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = time_steps(model, (3, 32, 32), 10, batch_size=8, steps=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert t.device == "cpu" and t.batch_size == 8 and t.train_s > 0 and t.teacher_s > 0
    cfg = FinetuneConfig(epochs=3, batch_size=100, max_batches_per_epoch=7)
    # 3 epochs x 7 batches x 100 images, each at the training step's cost plus the teacher's
    assert expected_seconds(t, cfg, 5000) == pytest.approx(2100 * (t.train_s + t.teacher_s))
    assert expected_seconds(t, FinetuneConfig(epochs=3, batch_size=100, kd_weight=0.0), 250) == \
        pytest.approx(3 * 2 * 100 * t.train_s)
    plan = finetune_plan(t.to_dict(), cfg, 5000)
    text = plan_text(plan)
    assert text.startswith("fine-tuning expected to take at most about ")
    assert "(3 epochs x 7 batches of 100; cpu: " in text and " teacher, unpruned model)" in text, text
    assert plan_text({"timing": "damaged"}) == "" and plan_text(None) == ""


def test_a_run_records_its_fine_tuning_plan_before_the_search(tmp_path):
    cfg = RunConfig(model="resnet20", weights=None, data="digits", strategy="uniform", search_images=50,
                    recal_images=32, report_images=50, latency_repeats=2, export=False, device="cpu",
                    recipe="quick", finetune={"max_batches_per_epoch": 2, "batch_size": 32})
    summary = run_job(cfg, tmp_path / "run")
    assert summary["status"] == "done", summary.get("error")
    plan = summary["finetune_plan"]
    assert (plan["epochs"], plan["batches"], plan["batch_size"], plan["distillation"]) == (1, 2, 32, True)
    assert plan["timing"]["batch_size"] == 32 and math.isfinite(plan["seconds"]) and plan["seconds"] > 0
    events = list(RunDir(tmp_path / "run").iter_events())
    kinds = [e["kind"] for e in events]
    base = next(e for e in events if e["kind"] == "base")
    assert base["finetune_plan"] == plan
    assert kinds.index("base") < next(i for i, e in enumerate(events) if e.get("status") == "searching")
    assert RunDir(tmp_path / "run").config()["recipe"] == "quick"
    # without fine-tuning there is nothing to time
    cfg0 = RunConfig(**{**cfg.to_dict(), "finetune": {"epochs": 0}, "recipe": None})
    assert "finetune_plan" not in run_job(cfg0, tmp_path / "run0")


# ---------------------------------------------------------------------- the recipe on the New run form
from test_studio_pages import app, assert_clean, runs_dir, texts  # noqa: E402,F401 (the studio fixture, shared)


def _captions(at) -> str:
    return " | ".join(texts(at.caption))


def test_new_run_form_recipe_expected_time_and_int8_calibration(runs_dir):
    at = app()
    assert_clean(at)
    # the form's own values (custom): the expected time from the summary child's timed step
    assert "Fine-tuning expected to take at most about " in _captions(at), _captions(at)
    assert "; cpu: " in _captions(at) and "unpruned model)" in _captions(at)

    at.selectbox(key="nr_recipe").set_value("standard").run()
    assert_clean(at)
    assert at.number_input(key="nr_ft_epochs").value == 10
    assert at.number_input(key="nr_warmup").value == pytest.approx(0.1)
    assert at.number_input(key="nr_batch_size").value == 128
    assert at.number_input(key="nr_max_batches").value == 0       # 0 = every fine-tune image
    caps = _captions(at)
    assert "Recipe **standard**" in caps and "changed" not in caps, caps
    assert "(10 epochs x " in caps and " batches of 128; " in caps, caps

    # an edited field overrides the recipe, and the page says so
    at.number_input(key="nr_ft_epochs").set_value(3).run()
    assert_clean(at)
    caps = _captions(at)
    assert "changed: epochs 10 -> 3" in caps and "(3 epochs x " in caps, caps
    assert not at.button(key="nr_start").disabled

    # INT8: more calibration images than the fine-tune split has is refused before Start
    at.checkbox(key="nr_quantize").set_value(True).run()
    assert_clean(at)
    at.number_input(key="nr_calibration_images").set_value(100_000).run()
    assert not at.exception
    assert any("INT8 calibration asks for 100,000 images" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    at.number_input(key="nr_calibration_images").set_value(64).run()
    assert_clean(at)
    assert not at.button(key="nr_start").disabled
