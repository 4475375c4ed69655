"""Shared test set-up: the shared data/weights, and thread behaviour under parallel processes."""

import os
from pathlib import Path

# Several processes share two cores in some tests (a Streamlit server, its job children, pytest):
# busy-waiting OpenMP threads would then slow each other down by an order of magnitude.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_shared = Path(__file__).resolve().parents[1].parent / "shared"
if (_shared / "data").is_dir():
    os.environ.setdefault("PRUNER_DATA_ROOT", str(_shared / "data"))
if (_shared / "models").is_dir():
    os.environ.setdefault("PRUNER_WEIGHTS_DIR", str(_shared / "models"))
