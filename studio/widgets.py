"""Widgets the pages share: page set-up, the run picker, status banners, result metrics, INT8, downloads, notes.

Each widget is one call on a page; the logic behind it lives in the pure modules (``results``,
``history``, ``artifacts``, ``notes``), which are unit-tested without Streamlit.
"""

from __future__ import annotations

from typing import Sequence

import streamlit as st

from pruner.errors import PrunerError
from pruner.runs.rundir import Liveness, RunDir

from . import artifacts, assets, history, notes, results, state
from .markup import plain_md

LEVEL_ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}


def page_setup() -> None:
    """Page title, the local page icon and the studio's stylesheet (``assets/``)."""
    st.set_page_config(page_title="Pruning studio", page_icon=str(assets.ICON), layout="wide")
    css = assets.css()
    if css:
        st.html(f"<style>{css}</style>")


# ---------------------------------------------------------------------- cached reads (keyed on the files' stamps)
@st.cache_data(show_spinner=False, max_entries=5000)
def _table_row(path: str, stamp: tuple) -> dict:
    return history.table_row(RunDir(path), created=stamp[0])


@st.cache_data(show_spinner=False, max_entries=64)
def _series(path: str, stamp: tuple) -> dict:
    return history.run_series(RunDir(path))


def runs_table_columns(any_tags: bool) -> dict:
    """The Runs table's columns; the tags column only when some run has tags."""
    return {**RUNS_TABLE_COLUMNS, **({} if any_tags else {"tags": None})}


def table_row(rd: RunDir) -> dict:
    """The Runs table's row of ``rd`` (read again only when its files change), with a dead run marked."""
    row = dict(_table_row(str(rd.path), history.stamp(rd)))
    if state.liveness(rd, row["status"]) == Liveness.INTERRUPTED:
        row["status"] = f"{row['status']} (interrupted)"
    return row


def run_series(rd: RunDir) -> dict:
    return _series(str(rd.path), history.stamp(rd))


# ---------------------------------------------------------------------- the run picker
def run_picker(names: Sequence[str], current: str | None, *, label: str, help: str,
               details: dict[str, str] | None = None) -> str:
    """A select box of runs (newest first) showing each run's status (``details``: name → text),
    attached to the URL, so a refresh or a shared link opens the same run. (No widget key: the box
    follows ``current`` when a link or a finished job names another run.)"""
    names = list(names)
    if current not in names:
        current = names[0]
    details = details or {}
    choice = st.selectbox(label, names, index=names.index(current), help=help,
                          format_func=lambda n: f"{n}  ·  {details[n]}" if details.get(n) else n)
    state.attach(choice)
    return choice


def statuses(runs: Sequence[RunDir], limit: int = 200) -> dict[str, str]:
    """Run name → its status for the picker (the newest ``limit`` runs; a dead run says so)."""
    out = {}
    for rd in runs[:limit]:
        status = rd.status()
        out[rd.name] = f"{status} (interrupted)" if state.liveness(rd, status) == Liveness.INTERRUPTED else status
    return out


# ---------------------------------------------------------------------- banners and results
def stop_if_damaged(rd: RunDir) -> None:
    """A damaged run directory (:meth:`RunDir.damage`): say why, and render nothing else of it."""
    problem = rd.damage()
    if problem:
        st.error(f"The run directory of {plain_md(rd.name)} is damaged: {plain_md(problem)}. Pick another run; "
                 "the others are not affected.", icon=LEVEL_ICONS["error"])
        st.stop()


def status_banner(rd: RunDir, status: str | None, error: str | None, *, noun: str = "run", hint: str = "") -> bool:
    """An error or warning for a failed, cancelled or interrupted run; returns whether one was shown."""
    live = state.liveness(rd, status)
    banner = results.status_banner(status, liveness=live, error=plain_md(error) if error else error, noun=noun,
                                   hint=hint)
    if banner is None:
        return False
    level, text = banner
    (st.error if level == "error" else st.warning)(text, icon=LEVEL_ICONS[level])
    return True


def model_summary(cfg, *, key: str) -> dict | None:
    """The model summary of ``cfg`` (:mod:`studio.summaries`), or None while it is still being built: then the
    elapsed time and a Stop are shown, and the page reruns when the summary is in. A stopped summary is an error
    with a Try again."""
    from pruner.model_summary import STOPPED

    from . import forms, summaries

    reg, skey = summaries.registry(), forms.summary_key(cfg)
    build = reg.get(skey)
    build.done.wait(summaries.wait_seconds())
    if build.done.is_set():
        result = build.result or {"error": "the model summary ended without a result; press Try again"}
        if result.get(STOPPED) and st.button("Try again", key=f"{key}_summary_retry", icon=":material/refresh:"):
            reg.forget(skey)
            st.rerun()
        return result

    @st.fragment(run_every=1.0)
    def building() -> None:
        if build.done.is_set():
            st.rerun()   # the whole page, now with the summary
        c1, c2 = st.columns([4, 1])
        c1.info(f"Building the model summary: loading the dataset and tracing the model in a separate process "
                f"({build.elapsed:.0f} s)…", icon=":material/hourglass_top:")
        if c2.button("Stop", key=f"{key}_summary_stop", icon=":material/stop_circle:",
                     help="Stop the process building the summary (e.g. a model file that hangs)"):
            reg.stop(skey)
            st.rerun()

    building()
    return None


def summary_ready(summary: dict | None, errors: list[str], shown_in_summary: list[str]) -> bool:
    """Whether a form's model summary (:func:`model_summary`) is in and good. One still being built
    holds Start back (:data:`~studio.forms.SUMMARY_PENDING`); a failed one is shown and holds it back
    too: both go into ``errors`` and ``shown_in_summary`` (so :func:`start_gate` does not repeat them)."""
    from .forms import SUMMARY_PENDING

    if summary is None:
        errors.append(SUMMARY_PENDING)
        shown_in_summary.append(SUMMARY_PENDING)
        return False
    if summary.get("error"):
        st.error(summary["error"], icon=":material/error:")
        errors.append(summary["error"])
        shown_in_summary.append(summary["error"])
        return False
    return True


def start_gate(errors: list[str], shown_in_summary: list[str], *, where: str, warnings=()) -> None:
    """Above a form's Start button: the problems not already shown beside the model summary, then
    ``warnings``, then why Start is disabled (the summary still being built, or a problem shown
    ``where``)."""
    from .forms import SUMMARY_PENDING

    for msg in errors:
        if msg not in shown_in_summary:
            st.error(msg, icon=":material/error:")
    for msg in warnings:
        st.warning(msg, icon=":material/schedule:")
    if SUMMARY_PENDING in shown_in_summary:
        st.caption("Start is enabled once the model summary is in.")
    elif shown_in_summary:
        st.caption(f"Fix the problem shown {where} to start.")


def result_metrics(summary: dict | None, *, per_row: int = 3, top5: bool = True, ort: bool = True) -> None:
    """The result metrics of a finished run, ``per_row`` to a row (so no label or value is cut off), and
    under them what makes its latency untrustworthy as it stands (:func:`results.latency_flags`); above them, a
    banner when the model misses its latency budget (:func:`results.budget_missed`)."""
    missed = results.budget_missed(summary)
    if missed:
        st.warning(plain_md(missed), icon=LEVEL_ICONS["warning"])
    _metric_rows(results.metrics(summary, top5=top5, ort=ort), per_row)
    for flag in results.latency_flags(summary):
        st.caption(f":material/warning: {plain_md(flag)}")


def _metric_rows(items: list[dict], per_row: int) -> None:
    for start in range(0, len(items), per_row):
        cols = st.columns(per_row)
        for col, m in zip(cols, items[start:start + per_row]):
            kw = {"delta_color": "off", "delta_arrow": "off"} if m["neutral"] else {}
            col.metric(m["label"], m["value"], delta=m["delta"], help=m.get("help"), **kw)


def int8_panel(rd: RunDir, cfg: dict | None, summary: dict | None, run_name: str, *, key: str) -> None:
    """INT8 of a finished pruning run: going on (the page follows it), its figures or its one-line failure,
    and Quantize to INT8 (a background job, :func:`state.try_quantize`) while the run has no INT8 model."""
    from pruner.quantize import DEFAULT_CALIBRATION_IMAGES

    from . import forms

    busy = state.quantizing(rd)
    q = results.int8(summary)
    offer = not busy and state.can_quantize(rd, summary)
    if not (busy or q or offer):
        return
    st.markdown("**INT8 model** (ONNX Runtime static quantization)")
    if busy:
        _quantizing_note(rd)
        return
    if q and q["error"]:
        st.error(f"The INT8 quantization failed: {plain_md(q['error'])}. The fp32 model and results are unchanged.",
                 icon=LEVEL_ICONS["error"])
    elif q:
        _metric_rows(results.int8_metrics(summary), 3)
        st.caption(results.int8_caption(summary))
    if not offer:
        return
    cols = st.columns([1, 1])
    images = cols[0].number_input("INT8 calibration images", min_value=1, step=64, key=f"{key}_images",
                                  value=int((cfg or {}).get("calibration_images") or DEFAULT_CALIBRATION_IMAGES),
                                  help="Fine-tune-split images the INT8 model is calibrated on (never the report "
                                       "split it is verified on)")
    problem = forms.calibration_size_problem(int(images), summary)
    if problem:
        st.error(problem, icon=LEVEL_ICONS["error"])
    with cols[1]:
        st.space("small")   # the button level with the number box
        pressed = st.button("Quantize to INT8", key=key, icon=":material/memory:", disabled=problem is not None,
                            help="Write model.int8.onnx in a background job (CPU), verified in ONNX Runtime on the "
                                 "report split beside the fp32 model; the fp32 files stay as they are")
    if pressed and problem is None:
        refused = state.try_quantize(run_name, int(images))
        if refused:
            st.error(plain_md(refused), icon=LEVEL_ICONS["error"])
        else:
            st.rerun()


def _quantizing_note(rd: RunDir) -> None:
    @st.fragment(run_every=1.0)
    def note() -> None:
        if not state.quantizing(rd):
            st.rerun()   # done: the whole page shows the INT8 result (and its download)
        st.info("Quantizing to INT8: calibrating on fine-tune images, then scoring and timing the INT8 model "
                "in ONNX Runtime beside the fp32 one. This page shows the result when it is done.",
                icon=":material/hourglass_top:")

    note()


def download_buttons(rd: RunDir, summary: dict | None, run_name: str, *, key: str) -> None:
    """Download buttons for the run's artifacts that exist inside its directory (read only when clicked)."""
    found = artifacts.downloads(rd.path, summary)
    if not found:
        return
    st.markdown("**Downloads**")
    cols = st.columns(len(found))
    for col, d in zip(cols, found):
        col.download_button(d.label, data=lambda p=d.path: p.read_bytes(), file_name=f"{run_name}-{d.path.name}",
                            mime=d.mime, key=f"{key}_{d.key}", on_click="ignore", icon=":material/download:",
                            help=d.help, width="stretch")


# ---------------------------------------------------------------------- tags and notes
def notes_editor(rd: RunDir, *, key: str, known_tags: Sequence[str] = ()) -> None:
    """Tags and a free-text note on the run, saved to ``<run>/notes.json``."""
    current = notes.read_notes(rd.path)
    with st.form(key=f"{key}_form", border=False):
        options = sorted(set(known_tags) | set(current["tags"]))
        tags = st.multiselect("Tags", options, default=current["tags"], key=f"{key}_tags_{rd.name}",
                              accept_new_options=True, placeholder="add a tag (type and press Enter)",
                              help=f"Short labels to find and group runs (up to {notes.MAX_TAGS})")
        note = st.text_area("Note", value=current["note"], key=f"{key}_note_{rd.name}", height=90,
                            placeholder="what this run was for, what you saw")
        saved = st.form_submit_button("Save tags and note", icon=":material/save:")
    if saved:
        try:
            notes.write_notes(rd.path, tags, note)
        except PrunerError as exc:
            st.error(str(exc), icon=LEVEL_ICONS["error"])
        except OSError as exc:
            st.error(f"Could not save the notes of {rd.name}: {exc.strerror or exc}; check that the runs folder "
                     "is writable.", icon=LEVEL_ICONS["error"])
        else:
            st.toast("Tags and note saved.")
            st.rerun()


# ---------------------------------------------------------------------- table columns
# Short headers (the full meaning in each help) so the tables fit the page at 1400 px without scrolling.
_N = st.column_config.NumberColumn
_T = st.column_config.TextColumn

RUNS_TABLE_COLUMNS = {
    "name": _T("name"),
    "kind": None,        # in the data (the Show filter and the run picker say it), not a column: the table must fit
    "status": _T("status"),
    "model": _T("model"),
    "data": _T("data"),
    "strategy": _T("strategy"),
    "budget": _T("budget"),
    "base top-1 (%)": _N("base top-1", format="%.2f",
                         help="Original model's top-1 (%), report split (pruning runs; an analysis's figure, on the "
                              "search split, is on its Sensitivity page)"),
    "pruned top-1 (%)": _N("top-1", format="%.2f", help="Pruned and fine-tuned model's top-1 (%), report split"),
    "MACs (M)": None,    # in the data (and the comparison), not shown: MACs kept says it relative to the original
    "MACs kept (%)": _N("MACs %", format="%.1f", help="Pruned model's MACs as a % of the original's"),
    "params (M)": None,
    "latency (ms)": _N("ms", format="%.2f", help="Pruned model's PyTorch latency (ms) at batch 1 on the run's "
                                                  "device: the original's ms times the paired ratio"),
    "tags": _T("tags", help="Tags and a note: Run details → Tags and note"),
    "created": st.column_config.DatetimeColumn("created", format="MM-DD HH:mm", help="When the run was started"),
}

COMPARE_COLUMNS = {
    "achieved": _N("achieved", format="%.3f", help="Pruned cost as a fraction of the original"),
    "base top-1 (%)": _N("base top-1", format="%.2f", help="Original model's top-1 (%), report split"),
    "pruned top-1 (%)": _N("top-1", format="%.2f", help="Pruned and fine-tuned model's top-1 (%), report split"),
    "± (points)": _N("±", format="%.2f", help="One binomial standard error of the pruned top-1 on its report images: "
                                             "differences under about twice this are noise"),
    "Δ top-1 (points)": _N("Δ top-1", format="%+.2f", help="Pruned minus original, points"),
    "report images": _N("report images", help="Images the top-1 was measured on"),
    "fine-tune images / epoch": _N("FT images / epoch", help="Images fine-tuning saw per epoch (batches × batch "
                                                             "size; 0 = not fine-tuned)"),
    "MACs (M)": _N("MACs (M)", format="%.2f"),
    "params (M)": _N("params (M)", format="%.3f"),
    "latency (ms)": _N("latency (ms)", format="%.2f", help="The original's ms times the paired ratio"),
    "latency vs original": _N("vs original", format="%.3f", help="Pruned over original, timed alternately"),
    "ORT latency (ms)": _N("ORT (ms)", format="%.2f", help="ONNX Runtime latency, CPU, batch 1"),
    "search time (s)": _N("search (s)", format="%.1f"),
    "total time (s)": _N("total (s)", format="%.1f"),
    "INT8 top-1 (%)": _N("INT8 top-1", format="%.2f", help="INT8 model's top-1 (%), ONNX Runtime, report split"),
    "INT8 ORT latency (ms)": _N("INT8 ORT (ms)", format="%.2f", help="INT8 model, ONNX Runtime, CPU, batch 1"),
    "INT8 speed-up": _N("INT8 ×", format="%.2f", help="fp32 pruned ORT latency over INT8's, timed alternately"),
}

GROUPS_COLUMNS = {   # the model summary's groups, in the New run page's narrow right column
    "group": _T("group"),
    "channels": _N("ch.", help="Output channels of the group"),
    "layers": _N("layers", help="Layers whose output channels the group prunes together"),
    "MMACs": _N("MMACs", format="%.2f", help="MACs of the layers whose output or input channels the group removes, "
                                             "millions (a layer between two groups counts in both)"),
    "params": _N("params", help="Parameters touched by the group"),
    "coupled": st.column_config.CheckboxColumn("coupled", help="Several layers coupled (e.g. by a residual add)"),
}
