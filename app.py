"""The pruning studio: ``streamlit run app.py``.

Four pages (scripts in ``pages/``) behind ``st.navigation``. Runs are background jobs in
their own processes, recorded in run directories under ``$PRUNER_RUNS_DIR`` (default
``./runs``), so they survive page refreshes, other tabs and server restarts.
"""

import streamlit as st

from studio.widgets import page_setup

page_setup()  # title, the local icon (assets/icon.png), the studio's stylesheet (assets/studio.css)

pages = [
    st.Page("pages/new_run.py", title="New run", icon=":material/add_circle:", default=True),
    st.Page("pages/live_run.py", title="Live run", icon=":material/monitoring:"),
    st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/grid_on:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
]
nav = st.navigation(pages)
with st.sidebar:
    st.caption("RL-guided structured pruning: search a per-layer channel allocation under a FLOPs, "
               "parameter or latency budget, fine-tune with distillation, export a verified ONNX model.")
nav.run()
