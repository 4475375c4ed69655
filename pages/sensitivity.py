"""Sensitivity: prune one layer group at a time at several ratios and see how much accuracy each costs.

A sensitivity analysis is a background job like a pruning run (kind ``sensitivity``): it writes
its run directory (``sensitivity`` events while it goes, ``sensitivity.json`` at the end), which
this page polls; a refresh, another tab or a restarted server shows the same analysis.
"""

import pandas as pd
import streamlit as st

from pruner.runs.rundir import SENSITIVITY, RunDir, Status
from studio import charts, forms, live, state, widgets
from studio import sensitivity_table as sens_table
from studio.events import format_seconds, is_final, progress, sensitivity_from_events

KIND = SENSITIVITY
DEFAULT_RATIOS = "0.2, 0.4, 0.6, 0.8"
MODES = {"new": "Start a new analysis", "open": "Open an analysis"}

st.title("Layer sensitivity")
st.caption("Each prunable layer group is pruned **alone** at several ratios (channels ranked by importance, "
           "BN recalibrated) and scored on the search split. Groups whose accuracy collapses early are the ones "
           "a budgeted search should leave wide.")

runs = state.all_runs(KIND)
requested = state.requested_run(KIND)
# after "Start analysis" the page switches to the new analysis (a widget's value can only be set before it exists)
if st.session_state.pop("sens_switch_to_open", False):
    st.session_state["sens_mode"] = "open"
st.session_state.setdefault("sens_mode", "open" if (requested or runs) else "new")
mode = st.radio("Mode", list(MODES), format_func=MODES.get, key="sens_mode", horizontal=True,
                label_visibility="collapsed")


# ---------------------------------------------------------------------- new analysis
def new_analysis() -> None:
    left, right = st.columns([3, 2], gap="large")
    with left:
        md = forms.model_data_inputs("sens_")
        settings = analysis_inputs()
        run_name = st.text_input("Run name (optional)", key="sens_run_name",
                                 placeholder="automatic: date-model-sensitivity")
    name = run_name.strip()
    config, ratios, errors = forms.check_analysis(md, name=name, **settings)
    with right:
        shown_in_summary = analysis_preview(config, ratios, errors)
    with left:
        start_button(config, ratios, errors, shown_in_summary, name)


def analysis_inputs() -> dict:
    """The analysis's own settings (ratios, importance, images, split protocol, seed, floor, device),
    as :func:`studio.forms.check_analysis` takes them."""
    st.subheader("Analysis")
    c1, c2 = st.columns(2)
    with c1:
        ratios_text = st.text_input("Fractions of channels removed", value=DEFAULT_RATIOS, key="sens_ratios",
                                    help="Comma-separated fractions in (0, 1); every layer group is pruned "
                                         "alone at each of them")
        importance = st.selectbox("Channel importance", forms.IMPORTANCE_CHOICES, key="sens_importance",
                                  help="Which channels go first inside a group")
    with c2:
        search_images = st.number_input("Images per point", min_value=1, value=forms.QUICK["search_images"],
                                        step=100, key="sens_images",
                                        help="Search-split images scored for each (group, ratio) point")
        recal_images = st.number_input("BN recalibration images", min_value=1,
                                       value=forms.QUICK["recal_images"], step=64, key="sens_recal_images")
    with st.expander("Advanced"):
        a1, a2 = st.columns(2)
        with a1:
            protocol = st.selectbox("Split protocol", forms.PROTOCOL_CHOICES, key="sens_protocol",
                                    help="test-halves: score on half of the test set (for models that saw "
                                         "all training images)")
            seed = st.number_input("Seed", min_value=0, value=0, step=1, key="sens_seed")
        with a2:
            min_channels = st.number_input("Min channels per group", min_value=1, value=1, step=1,
                                           key="sens_min_channels")
            device = forms.device_input("sens_")
    return dict(ratios_text=ratios_text, device=device, protocol=protocol, importance=importance,
                search_images=int(search_images), recal_images=int(recal_images), min_channels=int(min_channels),
                seed=int(seed))


def analysis_preview(config, ratios: list[float], errors: list[str]) -> list[str]:
    """What will be evaluated (the model summary's groups, the points); a summary still being built or
    failed adds to ``errors``. Returns the problems shown here."""
    shown_in_summary = []
    st.subheader("What will be evaluated")
    if config is None:
        st.info("Fix the settings on the left to see the model's layer groups.")
        return shown_in_summary
    summary = widgets.model_summary(config, key="sens")
    if widgets.summary_ready(summary, errors, shown_in_summary):
        groups = summary["groups"]
        points = len(groups) * len(ratios)
        m1, m2, m3 = st.columns(3)
        m1.metric("Layer groups", len(groups))
        m2.metric("Ratios", len(ratios))
        m3.metric("Evaluations", points + 1, help="one per (group, ratio) point, plus the unpruned model; "
                                                  "ratios that round to the same channel count are "
                                                  "evaluated once")
        st.caption(f"{summary['macs'] / 1e6:,.1f} M MACs · {summary['params'] / 1e6:,.3f} M parameters · "
                   f"ratios {', '.join(f'{r:g}' for r in ratios)}")
        st.plotly_chart(charts.group_cost_chart(groups), key="sens_cost_chart")
    return shown_in_summary


def start_button(config, ratios: list[float], errors: list[str], shown_in_summary: list[str], name: str) -> None:
    """The problems not shown beside the summary, and Start (disabled while there are any)."""
    widgets.start_gate(errors, shown_in_summary, where="on the right")
    start = st.button("Start analysis", type="primary", key="sens_start", icon=":material/play_arrow:",
                      disabled=bool(errors))
    if start and config is not None and not errors:
        run_id, problem = state.try_submit(KIND, config.to_dict(),
                                           name or state.new_run_name(state.short_model_name(config.model), KIND),
                                           options={"ratios": ratios}, what="start the analysis")
        if problem:
            st.error(problem, icon=":material/error:")
        else:
            state.attach(run_id)
            st.session_state["sens_switch_to_open"] = True
            st.rerun()


# ---------------------------------------------------------------------- results
def open_analysis() -> None:
    if not runs:
        st.info("No sensitivity analyses yet: start one with **Start a new analysis** above.")
        return
    current = requested if requested in [rd.name for rd in runs] else state.default_run(KIND)
    choice = widgets.run_picker([rd.name for rd in runs], current, label="Analysis", details=widgets.statuses(runs),
                                help="Every sensitivity analysis under the runs folder, newest first")
    path = state.run_path(choice)
    if path is None:
        st.error(f"The run directory of {choice} has disappeared; pick another analysis.", icon=":material/error:")
        return
    rd = RunDir(path)
    widgets.stop_if_damaged(rd)
    config = rd.config() or {}
    st.markdown(state.describe_config(config))
    shown_status = rd.status()   # what the picker above says of this analysis

    live.polling_panel(rd, choice, view_key="sens_view", shown_status=shown_status, active=not is_final(shown_status),
                       body=lambda view, summary, status: analysis_panel(rd, choice, config, view, summary, status))


def analysis_panel(rd: RunDir, choice: str, config: dict, view, summary: dict | None, status: str) -> None:
    """One poll of an analysis: progress and Cancel, its status, the points so far (or the result)."""
    p = progress(view, config, summary)
    text = p["text"]
    if p.get("eta_s") is not None and not is_final(status):
        text += f" · ETA {format_seconds(p['eta_s'])}"
    live.progress_row(choice, p["fraction"], text, status, key="sens_cancel",
                      toast="Cancel requested: the analysis stops after the current point.")

    widgets.status_banner(rd, status, (summary or {}).get("error") or view.error, noun="analysis",
                          hint=("The points measured before are shown below." if status == Status.CANCELLED else
                                "Start the analysis again."))

    sens = rd.sensitivity_result() if status == Status.DONE else None
    final = sens is not None
    sens, value = sens_table.complete(sens if final else sensitivity_from_events(view.sensitivity),
                                      (summary or {}).get("base_top1"))
    if final:
        m = st.columns(4)
        m[0].metric("Unpruned top-1 (search split)", state.fmt(sens.get("base_top1"), ".2f", " %"))
        m[1].metric("Layer groups", len(sens.get("groups") or []))
        m[2].metric("Evaluations", (summary or {}).get("evaluations", "—"))
        m[3].metric("Time", format_seconds((summary or {}).get("seconds")))
    elif status not in (Status.FAILED, Status.CANCELLED) and not sens.get("groups"):
        st.caption("Waiting for the first points (the data and model load first)…")

    heat = charts.sensitivity_heatmap(sens, value=value)   # "drop" once the unpruned score is in (first event)
    curves = charts.sensitivity_curves(sens, value="top1")
    for fig in (heat, curves):
        fig.update_layout(uirevision=choice)
    st.plotly_chart(heat, key="sens_heatmap")
    st.plotly_chart(curves, key="sens_curves")

    if sens.get("groups"):
        with st.expander("Table: top-1 drop (points) per group and ratio" if value == "drop"
                         else "Table: top-1 (%) per group and ratio"):
            st.dataframe(pd.DataFrame(sens_table.table(sens, value)), hide_index=True, key="sens_table")
    if final:
        cfg = rd.config() or {}
        st.page_link(state.PAGES["new"], label="Use in a new rl run", icon=":material/add_circle:",
                     query_params={forms.START_QUERY: choice},
                     help=f"A New run with rl starting from this analysis (instead of its own probes); choose "
                          f"the same model ({cfg.get('model')}), data ({cfg.get('data')}) and seed there")
        c1, c2 = st.columns(2)
        c1.download_button("Sensitivity JSON", data=lambda: rd.sensitivity_path.read_bytes(),
                           file_name=f"{choice}-sensitivity.json", mime="application/json", key="sens_dl_json",
                           on_click="ignore", icon=":material/download:")
        c2.download_button("Sensitivity CSV", data=sens_table.to_csv(sens), file_name=f"{choice}-sensitivity.csv",
                           mime="text/csv", key="sens_dl_csv", on_click="ignore", icon=":material/download:")


if mode == "new":
    new_analysis()
else:
    open_analysis()
