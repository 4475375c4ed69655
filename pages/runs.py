"""Runs: every run ever made (read from the run directories, so the history survives restarts),
a comparison like an experiment tracker's, and one run's network, tags, error and downloads."""

import pandas as pd
import streamlit as st

from pruner.runs.rundir import ARCHIVE_DIR, PRUNE, SENSITIVITY, JobState, Liveness, RunDir, Status, failed_on_settings
from studio import charts, history, results, state, widgets
from studio.events import format_seconds

MAX_COMPARE = 8

st.title("Runs")
st.caption(f"Every pruning run and sensitivity analysis under `{state.runs_root()}`, newest first.")

runs = state.all_runs()
if not runs:
    st.info("No runs yet. Start a pruning run on the **New run** page or an analysis on the **Sensitivity** page.")
    c1, c2 = st.columns(2)
    c1.page_link(state.PAGES["new"], label="New run", icon=":material/add_circle:")
    c2.page_link(state.PAGES["sensitivity"], label="Sensitivity", icon=":material/grid_on:")
    st.stop()

rows = [widgets.table_row(rd) for rd in runs]
by_name = {r["name"]: r for r in rows}
all_tags = history.all_tags(rows)

# ---------------------------------------------------------------------- all runs
f1, f2 = st.columns([1, 1])
with f1:
    kinds = st.pills("Show", [PRUNE, SENSITIVITY], selection_mode="multi", default=[PRUNE, SENSITIVITY],
                     key="runs_kinds", format_func={PRUNE: "pruning runs", SENSITIVITY: "sensitivity analyses"}.get)
with f2:
    tag_filter = st.multiselect("Tagged", all_tags, key="runs_tag_filter", placeholder="any tag",
                                help="Only runs with all of these tags") if all_tags else []
shown = history.filter_rows(rows, kinds, tag_filter)
table = pd.DataFrame(shown, columns=list(rows[0])).drop(columns=["error"])
st.dataframe(table, hide_index=True, key="runs_table", height=min(520, 38 + 35 * max(1, len(table))),
             placeholder="—", column_config=widgets.runs_table_columns(bool(all_tags)))

# ---------------------------------------------------------------------- comparison
st.subheader("Compare runs")
prune_names = [r["name"] for r in rows if r["kind"] == PRUNE]
if isinstance(st.session_state.get("runs_compare"), list):   # a run archived or deleted is compared no more
    st.session_state["runs_compare"] = [n for n in st.session_state["runs_compare"] if n in prune_names]
compare = st.multiselect("Runs to compare", prune_names, key="runs_compare", max_selections=MAX_COMPARE,
                         placeholder="choose pruning runs",
                         help=f"Up to {MAX_COMPARE} pruning runs: results side by side, search and fine-tuning "
                              "curves and Pareto fronts overlaid, and the settings that differ")
if not compare:
    st.caption("Pick two or more pruning runs to compare their results, curves and settings.")
else:
    chosen = [(name, RunDir(path)) for name in compare if (path := state.run_path(name)) is not None]
    cmp_rows = [history.compare_row(name, by_name.get(name, {}).get("status"), rd.config(), rd.summary())
                for name, rd in chosen]
    series = [widgets.run_series(rd) for _, rd in chosen]
    frame = pd.DataFrame(cmp_rows)
    result_cols, speed_cols = history.compare_columns(cmp_rows)   # INT8 columns when a compared run has them
    st.dataframe(frame[result_cols], hide_index=True, key="runs_compare_table", placeholder="—",
                 column_config=widgets.COMPARE_COLUMNS)
    st.dataframe(frame[speed_cols], hide_index=True, key="runs_compare_speed", placeholder="—",
                 column_config=widgets.COMPARE_COLUMNS)
    tab_front, tab_search, tab_ft, tab_cfg = st.tabs(["Pareto fronts", "Search curves", "Fine-tuning curves",
                                                      "Settings that differ"])
    with tab_front:
        st.plotly_chart(charts.compare_fronts_chart(series), key="runs_compare_fronts")
    with tab_search:
        st.plotly_chart(charts.compare_search_chart(series), key="runs_compare_search")
    with tab_ft:
        st.plotly_chart(charts.compare_finetune_chart(series), key="runs_compare_finetune")
    with tab_cfg:
        diff = history.config_diff({name: rd.config() for name, rd in chosen})
        if diff:
            st.dataframe(pd.DataFrame(diff), hide_index=True, key="runs_compare_config")
        else:
            st.caption("The selected runs have the same settings." if len(chosen) > 1 else
                       "Pick a second run to see the settings that differ.")

# ---------------------------------------------------------------------- one run
st.subheader("Run details")
names = [r["name"] for r in rows]
choice = widgets.run_picker(names, state.requested_run(), label="Run", help="Every run, newest first",
                            details={n: f"{by_name[n]['kind']}  ·  {by_name[n]['status']}" for n in names})
path = state.run_path(choice)
if path is None:
    st.error(f"The run directory of {choice} has disappeared; pick another run.", icon=":material/error:")
    st.stop()
rd = RunDir(path)
widgets.stop_if_damaged(rd)
cfg = rd.config() or {}
summary = rd.summary() or {}
kind = by_name[choice]["kind"]
status = summary.get("status") or rd.status()
st.markdown(state.describe_config(cfg))

links = st.columns(3)
if kind == PRUNE:
    links[0].page_link(state.PAGES["live"], label="Open on the Live run page", icon=":material/monitoring:",
                       query_params={state.QUERY_KEY: choice})
else:
    links[0].page_link(state.PAGES["sensitivity"], label="Open on the Sensitivity page", icon=":material/grid_on:",
                       query_params={state.QUERY_KEY: choice})

live = state.liveness(rd, status)
widgets.status_banner(rd, status, summary.get("error"))
if live == Liveness.ACTIVE:
    st.info(f"The run is going on ({status}); follow it on the "
            f"{'Live run' if kind == PRUNE else 'Sensitivity'} page.", icon=":material/hourglass_top:")
    if links[1].button("Cancel", key="runs_cancel", icon=":material/stop_circle:"):
        state.cancel(choice)
        st.toast("Cancel requested: the job stops after the current evaluation.")

if kind == PRUNE and failed_on_settings(summary):
    st.caption("This run failed on its settings: a resume would repeat them and fail again. Fix what the message "
               "says and start a new run on the **New run** page.")
elif kind == PRUNE and status != Status.DONE and live != Liveness.ACTIVE:
    exiting = state.job_state(choice) in JobState.GOING_ON   # its summary is written; its process is exiting
    ft = cfg.get("finetune") or {}
    with st.expander("Resume settings", icon=":material/tune:"):
        st.caption("A resume continues the same search; only fine-tuning may change (e.g. a smaller batch size "
                   "after running out of memory).")
        rc = st.columns(2)
        new_bs = rc[0].number_input("Fine-tuning batch size", min_value=1, max_value=4096,
                                    value=int(ft.get("batch_size") or 128), step=1, key="runs_resume_bs")
        new_ep = rc[1].number_input("Fine-tuning epochs", min_value=0, max_value=1000,
                                    value=int(ft.get("epochs") or 0), step=1, key="runs_resume_epochs")
    overrides = history.resume_overrides(ft, new_bs, new_ep)
    if links[2].button("Resume", key="runs_resume", icon=":material/replay:", disabled=exiting,
                       help="The job's process is still exiting; try again in a moment" if exiting else
                       "Continue where it stopped: finished search evaluations are replayed, fine-tuning "
                       "restarts from its last epoch"):
        _, problem = state.try_submit(PRUNE, state.resume_config(cfg), choice, resume=True, what="resume the run",
                                      options={"overrides": overrides} if overrides else None)
        if problem:
            st.error(problem, icon=":material/error:")
        else:
            st.switch_page(state.PAGES["live"], query_params={state.QUERY_KEY: choice})
elif kind == SENSITIVITY and status in (Status.FAILED, Status.CANCELLED):
    st.caption("Sensitivity analyses cannot be resumed: start a new one on the Sensitivity page.")

with st.expander("Tags and note", icon=":material/sell:", expanded=False):
    widgets.notes_editor(rd, key="runs_notes", known_tags=all_tags)

if live != Liveness.ACTIVE:
    with st.expander("Archive or delete", icon=":material/inventory_2:", expanded=False):
        st.caption(f"Archive moves the run to `{state.runs_root() / ARCHIVE_DIR}` (out of these lists, kept on disk: "
                   "move it back to restore it). Delete removes the run and all its files, its models too.")
        d1, d2 = st.columns(2)
        archive = d1.button("Archive", key="runs_archive", icon=":material/archive:")
        sure = d2.checkbox(f"Delete {choice} and its files for good", key="runs_delete_sure")
        delete = d2.button("Delete", key="runs_delete", icon=":material/delete:", disabled=not sure)
        if archive or delete:
            problem = state.remove(choice, delete=bool(delete))
            if problem:
                st.error(problem, icon=":material/error:")
            else:
                st.session_state.pop("runs_delete_sure", None)
                state.forget(choice)
                st.toast(f"{choice} {'deleted' if delete else 'archived'}.")
                st.rerun()

if kind == PRUNE:
    widgets.result_metrics(summary, per_row=4, top5=False, ort=False)
    if summary.get("seconds") is not None:
        st.caption(f"Total time {format_seconds(summary.get('seconds'))}")
    tab_graph, tab_layers = st.tabs(["Network graph", "Channels per layer"])
    with tab_graph:
        st.plotly_chart(charts.network_graph(summary.get("graph"), summary.get("layers") or [],
                                             summary.get("groups") or []), key="runs_graph")
    with tab_layers:
        st.plotly_chart(charts.network_chart(summary.get("layers") or [], summary.get("groups") or []),
                        key="runs_network")
    worker_rows = results.workers_table((summary.get("search") or {}).get("workers"))
    if worker_rows:
        st.markdown(f"**Ray workers** that scored this run's candidates ({len(worker_rows)})")
        st.dataframe(worker_rows, hide_index=True, key="runs_workers")
    widgets.int8_panel(rd, cfg, summary, choice, key="runs_int8")
    widgets.download_buttons(rd, summary, choice, key="runs_dl")
else:
    sens = rd.sensitivity_result()
    if sens:
        st.plotly_chart(charts.sensitivity_heatmap(sens), key="runs_sens_heatmap")
