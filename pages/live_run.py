"""Live run: progress, cancel, and charts that follow the run directory while the job runs."""

import time

import streamlit as st

from pruner.runs.rundir import PRUNE, JobState, RunDir, Status, failed_on_settings
from studio import forms, live, results, state, widgets
from studio.markup import plain_md
from studio.events import format_seconds, is_final, progress

st.title("Live run")

runs = state.all_runs(PRUNE)
if not runs:
    st.info("No pruning runs yet. Start one on the **New run** page.")
    st.page_link(state.PAGES["new"], label="New run", icon=":material/add_circle:")
    st.stop()

current = widgets.run_picker([rd.name for rd in runs], state.requested_run(PRUNE) or state.default_run(PRUNE),
                             label="Run", details=widgets.statuses(runs),
                             help="Every pruning run under the runs folder, newest first")
rd = RunDir(state.run_path(current))
widgets.stop_if_damaged(rd)
config = rd.config() or {}
st.markdown(state.describe_config(config))
uses_evals = forms.strategy_uses_evaluations(str(config.get("strategy", "rl")))
# A run is followed while it is going on, including one just resumed: a resume clears the old summary
# and writes a "queued" status before this page runs, and a job of this server counts as going on.
shown_status = rd.status()   # what the picker above says of this run
active_at_start = not is_final(shown_status) or state.job_state(current) in JobState.GOING_ON


def live_body(view, summary: dict | None, status: str) -> None:
    p = progress(view, config, summary, uses_evaluations=uses_evals)
    live.progress_row(current, p["fraction"], p["text"], status, key="live_cancel",
                      toast="Cancel requested: the job stops after the current evaluation.")
    elapsed = view.active_seconds(None if is_final(status) else time.time())   # less any time stopped
    best, chosen = live.shown_best(view, rd.chosen_candidate(summary))
    m = st.columns([1.6, 0.7, 1.2, 1.2, 1, 1])   # the status gets room for "fine-tuning", "cancelled"
    m[0].metric("Status", status)
    m[1].metric("Step", "—" if view.current_step is None else view.current_step)
    m[2].metric("Candidates evaluated", f"{view.evaluations}" + (f" / {p['expected']}" if p.get("expected") else ""))
    m[3].metric("Chosen search top-1" if chosen else "Best search top-1",
                state.fmt(best.get("top1") if best else None, ".2f", " %"),
                help="The search's answer (top-1 on the search split)" if chosen else
                     "The best candidate so far within the budget (top-1 on the search split); probes and "
                     "candidates over the budget never count")
    m[4].metric("Elapsed", format_seconds(elapsed), help="Time the run has been going on (not counting time "
                                                          "stopped between a cancel and a resume)")
    m[5].metric("ETA", "—" if is_final(status) else format_seconds(p.get("eta_s")),
                help="The whole run: this stage from its measured rate (a joint search: its seconds per training "
                     "epoch once one is done, and the final scoring), then the fine-tuning (a training step "
                     "timed before the search, scaled to the epochs) and the export and report (timed on the "
                     "original model)")

    widgets.status_banner(rd, status, (summary or {}).get("error") or view.error,
                          hint="Fix what the message says and start a new run on the **New run** page."
                          if failed_on_settings(summary) else "Resume it from the **Runs** page.")
    if summary and status == Status.DONE:
        if (summary.get("search") or {}).get("note"):
            st.info(plain_md(summary["search"]["note"]), icon=":material/info:")
        st.subheader("Result (report split)")
        widgets.result_metrics(summary, per_row=3)
        for line in results.result_captions(summary):
            st.caption(line)
        widgets.download_buttons(rd, summary, current, key="live_dl")

    figs = live.live_figures(view, rd, config, summary, current)
    for left, right in (("keep", "policy"), ("reward", "finetune"), ("macs", "latency")):
        c1, c2 = st.columns(2)
        c1.plotly_chart(figs[left], key=f"live_{left}")
        c2.plotly_chart(figs[right], key=f"live_{right}")
    worker_events = view.other.get("workers")
    if worker_events:
        st.markdown(f"**Ray workers** ({len(worker_events[-1].get('workers') or [])}): candidates scored and "
                    "utilisation (busy time over each worker's life)")
        st.dataframe(results.workers_table(worker_events[-1].get("workers")), hide_index=True,
                     key="live_workers", column_config={
                         "busy (s)": st.column_config.NumberColumn(format="%.1f"),
                         "utilisation (%)": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                            format="%.0f%%")})
    for k in [k for k in figs if k.startswith("line:")]:
        st.caption(plain_md(figs[k]))
    for row in live.extra_rows(figs):
        for column, k in zip(st.columns(len(row)), row):
            column.plotly_chart(figs[k], key=f"live_{k}")
    st.markdown("**Log** (newest first)")
    lines = view.log_lines(60)[::-1]
    st.code("\n".join(lines) if lines else "(no events yet)", language=None, height=240)



live.polling_panel(rd, current, view_key="live_view", shown_status=shown_status, active=active_at_start,
                   body=live_body, drop=("live_figs",))
