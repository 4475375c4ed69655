"""Runs: every run ever made (read from the run directories, so the history survives restarts),
side-by-side comparison with overlaid Pareto fronts, and one run's layers, error and downloads."""

from datetime import datetime
from pathlib import Path

import pandas as pd
import streamlit as st

from pruner.errors import PrunerError
from pruner.runs.rundir import PRUNE, RunDir, run_config
from studio import charts, results, state
from studio.events import format_seconds, is_final

MAX_COMPARE = 8
DOWNLOADS = (  # (summary["artifacts"] key, label, mime); "summary" is summary.json itself
    ("onnx", "ONNX model", "application/octet-stream"),
    ("checkpoint", "Checkpoint", "application/octet-stream"),
    ("summary", "Summary JSON", "application/json"),
    ("candidates", "Candidates CSV", "text/csv"),
)

st.title("Runs")
st.caption(f"Every pruning run and sensitivity analysis under `{state.runs_root()}`, newest first.")


# ---------------------------------------------------------------------- reading run directories
def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _stamp(rd: RunDir) -> tuple:
    """Changes whenever the run directory's records change (the cache key of its row)."""
    return _mtime(rd.config_path), _mtime(rd.summary_path), _size(rd.events_path)


def _short_model(spec: str | None) -> str:
    if not spec:
        return ""
    if spec.startswith("file:"):
        rest = spec[5:]
        path, _, factory = rest.rpartition(":")
        return f"{Path(path or rest).name}:{factory}" if path else Path(rest).name
    return spec


def _short_data(data: str | None) -> str:
    if not data:
        return ""
    return Path(data).name if ("/" in data or "\\" in data) else data


@st.cache_data(show_spinner=False, max_entries=5000)
def _row(path: str, stamp: tuple) -> dict:
    """The table row of one run (cached until its files change)."""
    rd = RunDir(path)
    cfg = rd.config() or {}
    summary = rd.summary() or {}
    kind = rd.kind()
    status = summary.get("status") or rd.status()
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    created = stamp[0]
    row = {
        "name": rd.name, "kind": kind, "status": status, "model": _short_model(cfg.get("model")),
        "data": _short_data(cfg.get("data")),
        "strategy": cfg.get("strategy") if kind == PRUNE else "—",
        "budget": cfg.get("budget") if kind == PRUNE else "—",
        "base top-1 (%)": base.get("top1") if kind == PRUNE else summary.get("base_top1"),
        "pruned top-1 (%)": pruned.get("top1"),
        "MACs (M)": pruned.get("macs") / 1e6 if pruned.get("macs") is not None else None,
        "MACs kept (%)": 100.0 * pruned["macs"] / base["macs"] if pruned.get("macs") and base.get("macs") else None,
        "params (M)": pruned.get("params") / 1e6 if pruned.get("params") is not None else None,
        "latency (ms)": (results.latency(summary) or {}).get("ms"),
        "created": datetime.fromtimestamp(created) if created else None,
        "error": summary.get("error"),
    }
    return row


@st.cache_data(show_spinner=False, max_entries=64)
def _candidates(path: str, size: int | None) -> list[dict]:
    """The fields of a run's candidate events that the comparison chart needs."""
    keep = ("candidate_id", "macs", "top1", "cost")
    return [{k: e.get(k) for k in keep} for e in RunDir(path).iter_events() if e.get("kind") == "candidate"]


def _base_macs(rd: RunDir, summary: dict) -> float | None:
    base = summary.get("base") or {}
    if base.get("macs"):
        return base["macs"]
    for e in rd.iter_events():
        if e.get("kind") == "base":
            return e.get("macs")
    return None


runs = state.all_runs()
if not runs:
    st.info("No runs yet. Start a pruning run on the **New run** page or an analysis on the **Sensitivity** page.")
    c1, c2 = st.columns(2)
    c1.page_link(state.PAGES["new"], label="New run", icon=":material/add_circle:")
    c2.page_link(state.PAGES["sensitivity"], label="Sensitivity", icon=":material/grid_on:")
    st.stop()

rows = []
for rd in runs:
    row = dict(_row(str(rd.path), _stamp(rd)))
    if not is_final(row["status"]):
        live = state.liveness(rd, row["status"])
        if live == "interrupted":
            row["status"] = f"{row['status']} (interrupted)"
    rows.append(row)
by_name = {r["name"]: r for r in rows}

# ---------------------------------------------------------------------- all runs
table = pd.DataFrame(rows).drop(columns=["error"])
kinds = st.pills("Show", ["prune", "sensitivity"], selection_mode="multi", default=["prune", "sensitivity"],
                 key="runs_kinds", format_func={"prune": "pruning runs", "sensitivity": "sensitivity analyses"}.get)
if kinds is not None and len(kinds) < 2:
    table = table[table["kind"].isin(kinds or [])]
st.dataframe(
    table, hide_index=True, key="runs_table", height=min(520, 38 + 35 * max(1, len(table))), placeholder="—",
    column_config={
        "name": st.column_config.TextColumn("name", width="medium"),
        "base top-1 (%)": st.column_config.NumberColumn("base top-1 (%)", format="%.2f",
                                                        help="Original model (report split; search split for "
                                                             "sensitivity analyses)"),
        "pruned top-1 (%)": st.column_config.NumberColumn("pruned top-1 (%)", format="%.2f",
                                                          help="Pruned and fine-tuned model on the report split"),
        "MACs (M)": st.column_config.NumberColumn("MACs (M)", format="%.2f", help="Pruned model, millions"),
        "MACs kept (%)": st.column_config.NumberColumn("MACs kept (%)", format="%.1f"),
        "params (M)": st.column_config.NumberColumn("params (M)", format="%.3f", help="Pruned model, millions"),
        "latency (ms)": st.column_config.NumberColumn("latency (ms)", format="%.2f",
                                                      help="Pruned model, PyTorch, batch 1, CPU"),
        "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm:ss"),
    })

# ---------------------------------------------------------------------- comparison
st.subheader("Compare runs")
prune_names = [r["name"] for r in rows if r["kind"] == "prune"]
compare = st.multiselect("Runs to compare", prune_names, key="runs_compare", max_selections=MAX_COMPARE,
                         placeholder="choose pruning runs",
                         help=f"Up to {MAX_COMPARE} pruning runs: their results side by side and their search "
                              "Pareto fronts overlaid")
if not compare:
    st.caption("Pick two or more pruning runs to compare their results and their accuracy/MACs trade-offs.")
else:
    cmp_rows, fronts = [], []
    for name in compare:
        path = state.run_path(name)
        if path is None:
            continue
        rd = RunDir(path)
        cfg, summary = rd.config() or {}, rd.summary() or {}
        base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
        search = summary.get("search") or {}
        top1_b, top1_p = base.get("top1"), pruned.get("top1")
        lat = results.latency(summary) or {}
        cmp_rows.append({
            "name": name, "status": by_name.get(name, {}).get("status"), "strategy": cfg.get("strategy"),
            "budget": cfg.get("budget"),
            "achieved": (summary.get("budget") or {}).get("achieved"),
            "base top-1 (%)": top1_b, "pruned top-1 (%)": top1_p,
            "Δ top-1 (points)": top1_p - top1_b if top1_p is not None and top1_b is not None else None,
            "MACs (M)": pruned["macs"] / 1e6 if pruned.get("macs") else None,
            "params (M)": pruned["params"] / 1e6 if pruned.get("params") else None,
            "latency (ms)": lat.get("ms"), "latency vs original": lat.get("ratio"), "timed on": lat.get("where"),
            "ORT latency (ms)": pruned.get("ort_latency_ms"),
            "evaluations": search.get("evaluations"), "search time (s)": search.get("seconds"),
            "total time (s)": summary.get("seconds"),
        })
        fronts.append({"name": name, "candidates": _candidates(str(rd.path), _size(rd.events_path)),
                       "base_macs": _base_macs(rd, summary), "chosen_id": rd.chosen_candidate(summary)})
    st.dataframe(pd.DataFrame(cmp_rows), hide_index=True, key="runs_compare_table", placeholder="—", column_config={
        "achieved": st.column_config.NumberColumn("achieved", format="%.3f",
                                                  help="Pruned cost as a fraction of the original"),
        "base top-1 (%)": st.column_config.NumberColumn(format="%.2f"),
        "pruned top-1 (%)": st.column_config.NumberColumn(format="%.2f"),
        "Δ top-1 (points)": st.column_config.NumberColumn(format="%+.2f"),
        "MACs (M)": st.column_config.NumberColumn(format="%.2f"),
        "params (M)": st.column_config.NumberColumn(format="%.3f"),
        "latency (ms)": st.column_config.NumberColumn(format="%.2f", help="The original's ms times the paired ratio"),
        "latency vs original": st.column_config.NumberColumn(format="%.3f",
                                                             help="Pruned over original, timed alternately"),
        "ORT latency (ms)": st.column_config.NumberColumn(format="%.2f"),
        "search time (s)": st.column_config.NumberColumn(format="%.1f"),
        "total time (s)": st.column_config.NumberColumn(format="%.1f"),
    })
    st.plotly_chart(charts.compare_fronts_chart(fronts), key="runs_compare_fronts")

# ---------------------------------------------------------------------- one run
st.subheader("Run details")
names = [r["name"] for r in rows]
current = state.requested_run()
if current not in names:
    current = names[0]
choice = st.selectbox("Run", names, index=names.index(current),
                      format_func=lambda n: f"{n}  ·  {by_name[n]['kind']}  ·  {by_name[n]['status']}",
                      help="Every run, newest first")
state.attach(choice)
path = state.run_path(choice)
if path is None:
    st.error(f"The run directory of {choice} has disappeared; pick another run.", icon=":material/error:")
    st.stop()
rd = RunDir(path)
cfg = rd.config() or {}
summary = rd.summary() or {}
row = by_name[choice]
kind = row["kind"]
status = summary.get("status") or rd.status()
st.markdown(state.describe_config(cfg))

links = st.columns(3)
if kind == "prune":
    links[0].page_link(state.PAGES["live"], label="Open on the Live run page", icon=":material/monitoring:",
                       query_params={state.QUERY_KEY: choice})
else:
    links[0].page_link(state.PAGES["sensitivity"], label="Open on the Sensitivity page", icon=":material/grid_on:",
                       query_params={state.QUERY_KEY: choice})

job = state.job_state(choice)
live = "final" if is_final(status) else state.liveness(rd, status)
if status == "failed":
    st.error(f"The run failed: {summary.get('error') or 'unknown error'}", icon=":material/error:")
elif status == "cancelled":
    st.warning(f"The run was cancelled: {summary.get('error') or ''}", icon=":material/cancel:")
elif live == "active":
    st.info(f"The run is going on ({status}); follow it on the "
            f"{'Live run' if kind == 'prune' else 'Sensitivity'} page.", icon=":material/hourglass_top:")
    if links[1].button("Cancel", key="runs_cancel", icon=":material/stop_circle:"):
        state.cancel(choice)
        st.toast("Cancel requested: the job stops after the current evaluation.")
elif live == "interrupted":
    st.warning("Interrupted: no process is running this run any more (its job was killed, or the server "
               "stopped).", icon=":material/warning:")

if kind == "prune" and status != "done" and live != "active":
    exiting = job in ("queued", "running")   # its summary is written; the process is still shutting down
    ft = cfg.get("finetune") or {}
    with st.expander("Resume settings", icon=":material/tune:"):
        st.caption("A resume continues the same search; only fine-tuning may change (e.g. a smaller batch size "
                   "after running out of memory).")
        rc = st.columns(2)
        new_bs = rc[0].number_input("Fine-tuning batch size", min_value=1, max_value=4096,
                                    value=int(ft.get("batch_size") or 128), step=1, key="runs_resume_bs")
        new_ep = rc[1].number_input("Fine-tuning epochs", min_value=0, max_value=1000,
                                    value=int(ft.get("epochs") or 0), step=1, key="runs_resume_epochs")
    overrides = {key: int(value) for key, value, old in (("finetune.batch_size", new_bs, ft.get("batch_size")),
                                                         ("finetune.epochs", new_ep, ft.get("epochs")))
                 if old is None or int(value) != int(old)}
    if links[2].button("Resume", key="runs_resume", icon=":material/replay:", disabled=exiting,
                       help="The job's process is still exiting; try again in a moment" if exiting else
                       "Continue where it stopped: finished search evaluations are replayed, fine-tuning "
                       "restarts from its last epoch"):
        run_cfg = run_config(cfg)
        try:
            state.submit("prune", run_cfg, choice, resume=True,
                         options={"overrides": overrides} if overrides else None)
        except PrunerError as exc:
            st.error(str(exc), icon=":material/error:")
        except Exception as exc:  # never a traceback on the page
            st.error(f"Could not resume the run: {type(exc).__name__}: {exc}", icon=":material/error:")
        else:
            st.switch_page(state.PAGES["live"], query_params={state.QUERY_KEY: choice})
elif kind == "sensitivity" and status in ("failed", "cancelled"):
    st.caption("Sensitivity analyses cannot be resumed: start a new one on the Sensitivity page.")

if kind == "prune":
    base, pruned = summary.get("base") or {}, summary.get("pruned") or {}
    if pruned:
        m = st.columns(5)
        m[0].metric("Top-1 (report split)", state.fmt(pruned.get("top1"), ".2f", " %"),
                    delta=None if base.get("top1") is None or pruned.get("top1") is None
                    else f"{pruned['top1'] - base['top1']:+.2f} pts")
        m[1].metric("MACs", state.fmt((pruned.get("macs") or 0) / 1e6, ",.2f", " M"),
                    delta=f"{pruned['macs'] / base['macs']:.0%} of original" if base.get("macs") and
                    pruned.get("macs") else None, delta_color="off", delta_arrow="off")
        m[2].metric("Parameters", state.fmt((pruned.get("params") or 0) / 1e6, ",.3f", " M"),
                    delta=f"{pruned['params'] / base['params']:.0%} of original" if base.get("params") and
                    pruned.get("params") else None, delta_color="off", delta_arrow="off")
        lat = results.latency(summary) or {}
        m[3].metric(lat.get("label", "PyTorch latency"), state.fmt(lat.get("ms"), ".2f", " ms"),
                    delta=f"{lat['ratio']:.0%} of original" if lat.get("ratio") is not None else None,
                    delta_color="off", delta_arrow="off")
        m[4].metric("Total time", format_seconds(summary.get("seconds")))
    st.plotly_chart(charts.layers_chart(summary.get("layers") or []), key="runs_layers")
    worker_rows = results.workers_table((summary.get("search") or {}).get("workers"))
    if worker_rows:
        st.markdown(f"**Ray workers** that scored this run's candidates ({len(worker_rows)})")
        st.dataframe(worker_rows, hide_index=True, key="runs_workers")

    # downloads: only files that exist inside the run directory
    root = rd.path.resolve()
    found = [(key, label, mime, p) for key, label, mime in DOWNLOADS
             if summary and (p := rd.artifact(key, summary)) is not None]
    if found:
        st.markdown("**Downloads**")
        cols = st.columns(len(found))
        for col, (key, label, mime, p) in zip(cols, found):
            col.download_button(label, data=lambda p=p: p.read_bytes(), file_name=f"{choice}-{p.name}", mime=mime,
                                key=f"runs_dl_{key}", on_click="ignore", icon=":material/download:",
                                help=f"{p.relative_to(root)} · {p.stat().st_size / 1e6:,.2f} MB", width="stretch")
else:
    sens = rd.sensitivity_result()
    if sens:
        st.plotly_chart(charts.sensitivity_heatmap(sens), key="runs_sens_heatmap")
