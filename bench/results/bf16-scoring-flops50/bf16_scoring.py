"""bench/compare_strategies.py with the previous CPU default put back: bf16 autocast for BN recalibration and
scoring (the search scores in float32 on the CPU now). Same arguments as compare_strategies.py."""
import runpy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
import pruner.search.evaluator as ev  # noqa: E402


def _autocast(self, *, recalibration=False):
    return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=True)


ev.Evaluator._autocast = _autocast
sys.argv = ["compare_strategies.py"] + sys.argv[1:]
runpy.run_path(str(ROOT / "bench" / "compare_strategies.py"), run_name="__main__")
