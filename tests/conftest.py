"""Shared test set-up: the shared data/weights, and thread behaviour under parallel processes."""

import os
from pathlib import Path

# Several processes share two cores in some tests (a Streamlit server, its job children, pytest):
# busy-waiting OpenMP threads would then slow each other down by an order of magnitude.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# pages wait for a model summary instead of showing "building…" with a Stop after 3 s (studio.summaries), so a
# page test sees the summary in one script run; tests/test_studio_pages.py tests the Stop with a short wait
os.environ.setdefault("PRUNER_SUMMARY_WAIT_S", "600")

_shared = Path(__file__).resolve().parents[1].parent / "shared"
if (_shared / "data").is_dir():
    os.environ.setdefault("PRUNER_DATA_ROOT", str(_shared / "data"))
if (_shared / "models").is_dir():
    os.environ.setdefault("PRUNER_WEIGHTS_DIR", str(_shared / "models"))


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny evaluations (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core CPU two threads mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    """Two real, finished pruning runs on the digits demo (``rl`` and ``random``, a short search and two
    fine-tuning epochs of one batch each): run directories the studio's tables and charts are tested on."""
    from pruner.finetune import FinetuneConfig
    from pruner.runs.config import RunConfig
    from pruner.runs.job import run_job

    root = tmp_path_factory.mktemp("studio-runs")
    out = {}
    for strategy in ("rl", "random"):
        cfg = RunConfig(model="resnet20", weights=None, data="digits", strategy=strategy, search_evals=5,
                        search_images=60, recal_images=32, report_images=60, latency_repeats=2,
                        finetune=FinetuneConfig(epochs=2, max_batches_per_epoch=1, batch_size=32), export=True,
                        device="cpu")
        summary = run_job(cfg, root / strategy)
        assert summary["status"] == "done", summary.get("error")
        out[strategy] = root / strategy
    return out
