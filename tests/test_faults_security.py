"""Security faults (issue 10): no user code runs without consent or inside the web server, checkpoints
load as data, the server is local by default, and the server process never decodes a dataset.

Real components only: the real Streamlit config, the real New run page under ``AppTest`` (the
test process plays the web server), real child processes, real ``torch.save``d checkpoints and
the real CLI. A user file proves whether it ran by writing a marker file with its process id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import streamlit as st
import torch
import torch.nn as nn
from streamlit.testing.v1 import AppTest

from pruner.data import cache as data_cache
from pruner.errors import PrunerError
from pruner.model_summary import summary_in_child
from pruner.models.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from pruner.models.cifar_resnet import cifar_resnet
from pruner.runs.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 120               # seconds: one AppTest script run (the summary child loads torch, data and model)
SLEEPER_TIMEOUT = 40        # seconds the summary child gets before it is stopped (it must reach the user code)

NET = """
import os
import torch.nn as nn
with open({marker!r}, "a") as fh:          # proof that this file's code ran, and in which process
    fh.write(f"{{os.getpid()}}\\n")

def build(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


def user_net(tmp_path: Path, name: str = "net.py") -> tuple[Path, Path]:
    """A model file that writes ``marker`` when imported; returns (file, marker)."""
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    path.write_text(NET.format(marker=str(marker)))
    return path, marker


def pids(marker: Path) -> list[int]:
    return [int(x) for x in marker.read_text().split()] if marker.exists() else []


_EARLIER_USER_MODULES: set[str] = set()


@pytest.fixture(autouse=True)
def _earlier_user_modules():
    """User modules that earlier tests imported on purpose (an in-process run given a ``python:`` cost
    with consent) are not this test's doing: :func:`user_modules` counts only those imported since."""
    _EARLIER_USER_MODULES.clear()
    _EARLIER_USER_MODULES.update(m for m in sys.modules if m.startswith("pruner_user_"))
    yield


def user_modules() -> list[str]:
    """User modules imported into this process since the test began."""
    return [m for m in sys.modules if m.startswith("pruner_user_") and m not in _EARLIER_USER_MODULES]


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pruner", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


def assert_one_error_line(res, *needles) -> None:
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ---------------------------------------------------------------------- the server's own settings
def test_server_config_binds_localhost_and_hides_error_details():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["client"]["showErrorDetails"] in ("none", "type")
    # and Streamlit itself, started from the project folder as `streamlit run app.py` is, resolves them so
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120).stdout
    assert 'address = "127.0.0.1"' in out
    assert any(f'showErrorDetails = "{v}"' in out for v in ("none", "type")), out


# ---------------------------------------------------------------------- consent in the engine
def test_run_config_refuses_user_code_without_consent(tmp_path):
    net, marker = user_net(tmp_path)
    for kw in ({"model": f"file:{net}:build"},
               {"strategy": "constrained", "strategy_params": {"cost": f"python:{net}:build"}}):
        with pytest.raises(PrunerError, match="I trust this file: run its code") as exc:
            RunConfig(weights=None, **kw)
        assert "\n" not in str(exc.value)
        RunConfig(weights=None, trust_code=True, **kw)  # consent recorded: accepted
    # a stored config (a run directory's config.json, a job spec) is checked the same way
    stored = RunConfig(model=f"file:{net}:build", weights=None, trust_code=True).to_dict()
    with pytest.raises(PrunerError, match="consent"):
        RunConfig.from_dict({**stored, "trust_code": False})
    assert not marker.exists() and not user_modules()


def test_cli_naming_the_file_is_consent(tmp_path):
    net, marker = user_net(tmp_path)
    res = cli("info", "--model", f"file:{net}:build", "--weights", "none", "--data", "digits")
    assert res.returncode == 0, res.stderr
    assert pids(marker) and os.getpid() not in pids(marker)


def test_image_size_is_capped_before_any_data_loads():
    with pytest.raises(PrunerError, match=r"image_size.* 512"):
        RunConfig(weights=None, data="digits", image_size=1024)


# ---------------------------------------------------------------------- the summary child
def test_summary_child_builds_user_code_outside_this_process(tmp_path):
    net, marker = user_net(tmp_path)
    cfg = RunConfig(model=f"file:{net}:build", weights=None, data="digits", trust_code=True)
    summary = summary_in_child(cfg.to_dict(), timeout=300)
    assert summary.get("error") is None, summary
    assert summary["data"]["num_classes"] == 10 and len(summary["groups"]) >= 1 and summary["macs"] > 0
    ran_in = pids(marker)
    assert len(ran_in) == 1 and ran_in[0] != os.getpid()
    assert not user_modules()
    # without consent the child refuses before importing anything
    summary = summary_in_child({**cfg.to_dict(), "trust_code": False}, timeout=300)
    assert "I trust this file" in summary["error"] and "\n" not in summary["error"]
    assert pids(marker) == ran_in


def test_summary_child_times_out_on_a_file_that_sleeps_forever(tmp_path):
    marker, helper = tmp_path / "reached", tmp_path / "helper.pid"
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(
        "import os, subprocess, sys, time\n"
        f"helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        f"open({str(helper)!r}, 'w').write(str(helper.pid))\n"
        f"open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(3600)\n"
        "def build(num_classes=10):\n    raise SystemExit\n")
    cfg = RunConfig(model=f"file:{sleeper}:build", weights=None, data="digits", trust_code=True)
    summary = summary_in_child(cfg.to_dict(), timeout=SLEEPER_TIMEOUT)
    assert summary["error"].startswith(f"building the model summary took longer than {SLEEPER_TIMEOUT} s")
    assert "\n" not in summary["error"]
    assert marker.exists(), "the child never reached the user code: raise SLEEPER_TIMEOUT on a slow machine"
    child, grandchild = int(marker.read_text()), int(helper.read_text())
    assert child != os.getpid()
    assert not alive(child) and not alive(grandchild)  # the whole process group is gone
    assert not user_modules()


# ---------------------------------------------------------------------- the New run page (AppTest)
@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("PRUNER_RUNS_DIR", str(root))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield root
    from studio import state

    state._shared().manager.shutdown(cancel=True)
    st.cache_resource.clear()
    st.cache_data.clear()


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def new_run_page(**widgets) -> AppTest:
    """The app (New run is its default page) with widget values set before the first run, so the
    default settings' summary (a dataset load in a child) is not built for nothing."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"nr_data": "digits", "nr_weights": "random", "nr_device": "cpu", **widgets}.items():
        at.session_state[key] = value
    return at.run()


def test_uploaded_model_runs_only_after_consent_and_never_in_the_server(runs_dir, tmp_path):
    net, marker = user_net(tmp_path, "upload_net.py")
    at = new_run_page(nr_source="upload")
    at.file_uploader(key="nr_upload_py").upload("upload_net.py", net.read_bytes(), "text/x-python").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="nr_factory").value == "build"   # found by parsing, not by importing
    consent = at.checkbox(key="nr_trust_code")
    assert consent.label == "I trust this file: run its code" and consent.value is False
    assert any("tick “I trust this file: run its code”" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    assert "Prunable groups" not in metrics(at)             # no summary was built
    assert not marker.exists() and not user_modules()        # the upload's code did not run anywhere

    at.checkbox(key="nr_trust_code").check().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, texts(at.error)
    assert metrics(at)["Prunable groups"] == "1"             # the summary, built from the uploaded model ...
    ran_in = pids(marker)
    assert len(ran_in) == 1 and ran_in[0] != os.getpid()    # ... in another process
    assert not user_modules()                                # the server never imported it
    assert not at.button(key="nr_start").disabled

    other, other_marker = user_net(tmp_path, "other_net.py")    # consent was for that file, not the next one
    at.file_uploader(key="nr_upload_py").upload("other_net.py", other.read_bytes(), "text/x-python").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.checkbox(key="nr_trust_code").value is False
    assert at.button(key="nr_start").disabled
    assert not other_marker.exists() and pids(marker) == ran_in


def test_a_model_file_that_hangs_can_be_stopped_from_the_page(runs_dir, tmp_path, monkeypatch):
    """The summary is built off the script thread: after a moment the page shows its elapsed time and a Stop
    (not a spinner for the 300 s timeout); Stop kills the child (the user's code was running in it), the page
    says so in one line with Try again, and Start stays disabled."""
    monkeypatch.setenv("PRUNER_SUMMARY_WAIT_S", "1")
    marker = tmp_path / "reached"
    sleeper = ("import os, time\n"
               f"open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
               "time.sleep(3600)\n"
               "def build(num_classes=10):\n    raise SystemExit\n")
    at = new_run_page(nr_source="upload")
    at.file_uploader(key="nr_upload_py").upload("hangs.py", sleeper.encode(), "text/x-python").run()
    at.checkbox(key="nr_trust_code").check().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(m.startswith("Building the model summary") for m in texts(at.info)), texts(at.info)
    assert at.button(key="nr_start").disabled
    assert any("once the model summary is in" in c for c in texts(at.caption)), texts(at.caption)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:   # the child reaches the user's code
        time.sleep(0.2)
    child = int(marker.read_text())
    assert child != os.getpid() and alive(child)
    at.button(key="nr_summary_stop").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not alive(child)
    (msg,) = [m for m in texts(at.error) if "model summary" in m]
    assert msg.startswith("building the model summary was stopped after") and "\n" not in msg
    assert at.button(key="nr_start").disabled
    marker.unlink()
    at.button(key="nr_summary_retry").click().run()          # Try again: built again (and hangs again)
    assert any(m.startswith("Building the model summary") for m in texts(at.info)), texts(at.info)
    while not marker.exists() and time.monotonic() < deadline + 60:
        time.sleep(0.2)
    at.button(key="nr_summary_stop").click().run()
    assert not alive(int(marker.read_text()))


def test_the_server_never_decodes_the_dataset(runs_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    for split, n in (("train", 6), ("test", 3)):
        for ci, cls in enumerate(("cat", "dog")):
            (folder / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), (40 * ci, 10 * i, 90)).save(folder / split / cls / f"{i}.png")
    decoded_before = set(data_cache._MEMORY)
    at = new_run_page(nr_data="folder", nr_folder=str(folder), nr_image_size=1024)
    assert not at.exception
    assert any(m.startswith("Resize images to must be") and " 512" in m for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    at.number_input(key="nr_image_size").set_value(16).run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, texts(at.error)
    assert metrics(at)["Classes"] == "2"                    # the summary read the folder ...
    assert any("Input 3×16×16" in c for c in texts(at.caption)), texts(at.caption)
    assert set(data_cache._MEMORY) == decoded_before         # ... in a child: nothing decoded is held here


# ---------------------------------------------------------------------- checkpoints
def pruned_checkpoint(path: Path, **override) -> Path:
    """A real checkpoint: ResNet-20 with two channels of its first block removed, saved as a run saves it."""
    from pruner.pruning.space import PruningRecord, apply_record

    record = PruningRecord({"layer1.0.conv1": [0, 5]})
    model = apply_record(cifar_resnet("resnet20", 10), record, (3, 32, 32))
    ckpt = {"format": CHECKPOINT_FORMAT, "model_spec": {"source": "zoo", "name": "resnet20", "num_classes": 10,
                                                        "weights": None, "trust_checkpoint": False},
            "record": record.to_dict(), "state_dict": model.state_dict(), "input_size": [3, 32, 32],
            "mean": [0.5] * 3, "std": [0.25] * 3, "classes": [str(i) for i in range(10)]}
    ckpt.update(override)
    ckpt = {k: v for k, v in ckpt.items() if v is not None}
    torch.save(ckpt, path)
    return path


def code_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint whose model is ``file:<net.py>:build`` (importing net.py writes a marker)."""
    net, marker = user_net(tmp_path, "ckpt_net.py")
    state = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).state_dict()
    path = pruned_checkpoint(tmp_path / "code.pt", state_dict=state, record={"removed": {}},
                             model_spec={"source": "file", "name": f"{net}:build", "num_classes": 10,
                                         "weights": None, "trust_checkpoint": False})
    return path, marker


def test_checkpoint_naming_code_is_refused_without_trust(tmp_path):
    path, marker = code_checkpoint(tmp_path)
    with pytest.raises(PrunerError, match="--trust-checkpoint") as exc:
        load_checkpoint(path)
    assert "ckpt_net.py" in str(exc.value) and "\n" not in str(exc.value)
    assert not marker.exists() and not user_modules()
    disguised = tmp_path / "disguised.pt"                      # a file: model under the zoo source
    disguised_ckpt = torch.load(path, weights_only=True)
    disguised_ckpt["model_spec"] = {**disguised_ckpt["model_spec"], "source": "zoo",
                                    "name": "file:" + disguised_ckpt["model_spec"]["name"]}
    torch.save(disguised_ckpt, disguised)
    with pytest.raises(PrunerError, match="does not match"):
        load_checkpoint(disguised)
    assert not marker.exists() and not user_modules()
    model, _ = load_checkpoint(path, trust_checkpoint=True)   # the user's explicit choice
    assert marker.exists()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_a_real_checkpoint_loads(tmp_path):
    model, ckpt = load_checkpoint(pruned_checkpoint(tmp_path / "ok.pt"))
    assert model.layer1[0].conv1.out_channels == 14 and ckpt["classes"][0] == "0"


@pytest.mark.parametrize("override, needle", [
    ({"record": None}, "missing record"),
    ({"state_dict": None, "classes": None}, "missing state_dict, classes"),
    ({"model_spec": "resnet20"}, "model_spec must hold"),
    ({"model_spec": {"source": "zoo", "name": "resnet20"}}, "model_spec must hold"),
    ({"model_spec": {"source": "pickle", "name": "x", "num_classes": 10}}, "unknown model source"),
    ({"model_spec": {"source": "zoo", "name": "resnet9000", "num_classes": 10}}, "unknown zoo model"),
    ({"model_spec": {"source": "torchvision", "name": "nonet", "num_classes": 10}}, "unknown torchvision model"),
    ({"model_spec": {"source": "zoo", "name": "torchvision:resnet18", "num_classes": 10}}, "does not match"),
    ({"record": {"removed": {"layer1.0.conv1": ["a"]}}}, "record must be"),
    ({"record": {"removed": {"layer1.0.conv1": [0, 99]}}}, "out of range"),
    ({"record": {"removed": {"no.such.layer": [0]}}}, "no.such.layer"),
    ({"record": {"removed": {}}}, "wrong shape"),               # weights of the pruned model, record says unpruned
    ({"input_size": [3, 32]}, "input_size"),
    ({"mean": [0.5]}, "mean must be 3 finite numbers"),
    ({"std": [0.0, 1.0, 1.0]}, "std must lie in"),
    ({"classes": ["a", "b"]}, "2 class names for a model with 10 classes"),
    ({"state_dict": {"conv1.weight": "not a tensor"}}, "state_dict must map"),
    ({"format": "something-else"}, "not a pruned checkpoint"),
])
def test_malformed_checkpoint_is_a_one_line_error(tmp_path, override, needle):
    path = pruned_checkpoint(tmp_path / "bad.pt", **override)
    with pytest.raises(PrunerError) as exc:
        load_checkpoint(path)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_checkpoint_that_is_not_a_dict_or_not_a_file(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 50)
    for name, needle in (("list.pt", "not a pruned checkpoint"), ("junk.pt", "could not read"),
                         ("absent.pt", "does not exist")):
        with pytest.raises(PrunerError, match=needle):
            load_checkpoint(tmp_path / name)


def test_cli_export_refuses_code_and_malformed_checkpoints(tmp_path):
    path, marker = code_checkpoint(tmp_path)
    res = cli("export", "--checkpoint", path, "--out", tmp_path / "m.onnx")
    assert_one_error_line(res, "--trust-checkpoint", "ckpt_net.py")
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()

    bad = pruned_checkpoint(tmp_path / "bad.pt", model_spec=None)
    res = cli("export", "--checkpoint", bad, "--out", tmp_path / "m.onnx")
    assert_one_error_line(res, "missing model_spec")

    res = cli("export", "--checkpoint", path, "--out", tmp_path / "m.onnx", "--trust-checkpoint")
    assert res.returncode == 0, res.stderr
    assert marker.exists() and (tmp_path / "m.onnx").is_file()
