"""Upload faults: a model file too large to parse, a file that blows up the parser, the same file
parsed on every rerun, a full disk under the uploads folder.

Real components only: the real parser child (``pruner.userfile``), the real New run page under
``AppTest`` (the test process plays the web server), the calling process measured from a child
interpreter (``ru_maxrss``), and a real full filesystem (a 64 kB tmpfs in a private mount
namespace) or a real file-size limit (``RLIMIT_FSIZE``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pruner import userfile
from pruner.errors import PrunerError
from pruner.userfile import MAX_SOURCE_BYTES, factories_in

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 120               # seconds: one AppTest script run

HEAD = b"def build(num_classes=10):\n    pass\n"
HUGE = HEAD + b"x=1\n" * 2_500_000                      # 10 MB: 6 GB and ~40 s of ast in the server before
JUST_OVER = HEAD + b"#" * (MAX_SOURCE_BYTES - len(HEAD)) + b"\n"
DEEP_SUM = b"x=" + b"+".join([b"1"] * 200_000)          # 400 kB: RecursionError in ast
DEEP_NEG = b"x=" + b"-" * 100_000 + b"1"                # 100 kB: MemoryError (the parser's stack)
# the worst case under the cap: ~0.8 GB of ast in whichever process parses it
FULL = HEAD + b"x=1\n" * ((MAX_SOURCE_BYTES - len(HEAD)) // 4)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def python(snippet: str, *, env: dict | None = None, prefix: list[str] | None = None, timeout: float = 300):
    """Run ``snippet`` in a fresh interpreter (this project importable); its last stdout line as JSON."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([*(prefix or []), sys.executable, "-c", textwrap.dedent(snippet)], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- the cap
def test_a_file_over_the_cap_is_refused_before_it_is_parsed():
    started = userfile.parses_started
    for data in (HUGE, JUST_OVER):
        assert len(data) > MAX_SOURCE_BYTES
        with pytest.raises(PrunerError) as exc:
            factories_in(data, "big.py")
        msg = one_line(exc)
        assert msg.startswith("big.py is ") and "over the 1 MiB" in msg and "limit" in msg, msg
        assert "upload only the Python source" in msg
    assert str(exc.value).startswith("big.py is 1,048,577 bytes, over the 1 MiB (1,048,576 bytes) limit")
    assert userfile.parses_started == started                # no parser child was started
    assert factories_in(JUST_OVER[:-1], "at_the_cap.py") == ["build"]   # the cap itself is allowed


# ---------------------------------------------------------------------- parser blow-ups
def test_parser_blowups_are_one_line_and_the_caller_stays_small():
    """The deep files' errors (``DEEP_SUM``, ``DEEP_NEG``) and the worst file under the cap (``FULL``), parsed for
    a caller whose peak memory is measured: the ast lives and dies in the parser's own process."""
    out = python(f"""
        import json, resource
        from pruner.errors import PrunerError
        from pruner.userfile import factories_in
        files = (("deep_sum.py", b"x=" + b"+".join([b"1"] * 200_000)), ("deep_neg.py", b"x=" + b"-" * 100_000 + b"1"),
                 ("full.py", {HEAD!r} + b"x=1\\n" * {(MAX_SOURCE_BYTES - len(HEAD)) // 4}))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        answers = {{}}
        for name, data in files:
            try:
                answers[name] = factories_in(data, name, timeout=240)
            except PrunerError as exc:
                answers[name] = str(exc)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"answers": answers, "grew_mb": grew / 1024}}))
    """)
    sum_msg, neg_msg = out["answers"]["deep_sum.py"], out["answers"]["deep_neg.py"]
    for msg in (sum_msg, neg_msg):
        assert isinstance(msg, str) and "\n" not in msg and "upload it again" in msg, msg
    assert sum_msg.startswith("deep_sum.py nests its expressions too deeply") and "RecursionError" in sum_msg
    assert neg_msg.startswith("deep_neg.py is too complex to parse") and "MemoryError" in neg_msg
    assert out["answers"]["full.py"] == ["build"]           # parsed, ~0.8 GB, in the grandchild ...
    assert out["grew_mb"] < 100, out                          # ... so the caller never held it


def test_a_parse_that_runs_out_of_time_or_dies_is_one_line(monkeypatch):
    slow = FULL[:-8] + b"#slow\n"
    with pytest.raises(PrunerError) as exc:
        factories_in(slow, "slow.py", timeout=0.05)          # seconds of parsing, stopped after 0.05 s
    assert one_line(exc) == "parsing slow.py took longer than 0.05 s and was stopped; upload a smaller model file"

    monkeypatch.setattr(sys, "executable", shutil.which("false"))      # a parser that exits without answering
    with pytest.raises(PrunerError) as exc:
        factories_in(HEAD + b"# dies\n", "dies.py")
    assert one_line(exc).startswith("the process parsing dies.py stopped without an answer: exit code 1")

    monkeypatch.setattr(sys, "executable", str(ROOT / "no-such-python"))   # a parser that cannot start
    with pytest.raises(PrunerError) as exc:
        factories_in(HEAD + b"# cannot start\n", "nostart.py")
    assert one_line(exc).startswith("could not start the process that parses nostart.py")
    monkeypatch.undo()
    assert factories_in(HEAD + b"# cannot start\n", "nostart.py") == ["build"]  # not remembered: it was the machine


def test_the_existing_messages_still_come_first():
    for data, needle in ((b"\xff\xfe def", "is not a UTF-8 text file"), (b"def f():\x00", "contains null bytes"),
                         (b"x = 1\n", "defines no public function or class"), (b"def f(:\n", "is not valid Python")):
        with pytest.raises(PrunerError, match=needle) as exc:
            factories_in(data, "bad.py")
        one_line(exc)


# ---------------------------------------------------------------------- parsed once
def test_the_same_bytes_are_parsed_once():
    data = HEAD + b"class Net:\n    pass\n# parsed once\n"
    started = userfile.parses_started
    assert factories_in(data, "net.py") == ["build", "Net"]
    assert userfile.parses_started == started + 1
    assert factories_in(data, "renamed.py") == ["build", "Net"]        # same content, any name: no new child
    assert userfile.parses_started == started + 1
    deep = DEEP_SUM + b"  # parsed once"
    for name in ("deep.py", "again.py"):                                 # a failure is remembered too
        with pytest.raises(PrunerError, match=f"^{name} nests its expressions too deeply"):
            factories_in(deep, name)
    assert userfile.parses_started == started + 2


# ---------------------------------------------------------------------- the New run page
from test_faults_security import runs_dir, texts  # noqa: E402,F401 (the studio fixture and helper, shared)


def upload_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"nr_data": "digits", "nr_weights": "random", "nr_device": "cpu", "nr_source": "upload"}.items():
        at.session_state[key] = value
    return at.run()


def test_the_page_states_the_cap_and_refuses_a_huge_upload_before_parsing_or_saving(runs_dir):
    at = upload_page()
    assert not at.exception, [e.message for e in at.exception]
    assert any("At most 1 MiB" in c for c in texts(at.caption)), texts(at.caption)
    started = userfile.parses_started
    at.file_uploader(key="nr_upload_py").upload("huge.py", HUGE, "text/x-python").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(m.startswith("huge.py is 9.54 MiB, over the 1 MiB limit") for m in texts(at.error)), texts(at.error)
    assert at.button(key="nr_start").disabled
    assert not any(sb.key == "nr_factory" for sb in at.selectbox)      # nothing was listed ...
    assert userfile.parses_started == started                           # ... or parsed
    assert not list((runs_dir / "uploads").glob("*"))                   # ... or stored
    at.text_input(key="nr_run_name").set_value("edited").run()          # editing a field does not redo anything
    assert not at.exception and userfile.parses_started == started


def test_the_page_parses_an_upload_once_and_shows_a_parser_blowup_as_one_line(runs_dir):
    at = upload_page()
    started = userfile.parses_started
    at.file_uploader(key="nr_upload_py").upload("deep.py", DEEP_SUM + b"  # page", "text/x-python").run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(m.startswith("deep.py nests its expressions too deeply") for m in texts(at.error)), texts(at.error)
    at.text_input(key="nr_run_name").set_value("edited").run()
    assert not at.exception
    assert userfile.parses_started == started + 1

    at.file_uploader(key="nr_upload_py").upload("net.py", HEAD + b"# page\n", "text/x-python").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.selectbox(key="nr_factory").value == "build"
    for value in ("edited-again", "edited"):                            # reruns reuse the answer
        at.text_input(key="nr_run_name").set_value(value).run()
        assert at.selectbox(key="nr_factory").value == "build"
    assert userfile.parses_started == started + 2


# ---------------------------------------------------------------------- a full disk
SAVE = """
    import json, os, resource, signal
    from pathlib import Path
    from pruner.errors import PrunerError
    from studio.forms import save_upload
    if os.environ.get("FSIZE_LIMIT"):                  # files may not grow past this: EFBIG, as on a quota
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(os.environ["FSIZE_LIMIT"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        answer = {"saved": str(save_upload(b"#" * 200_000 + b"\\ndef build():\\n    pass\\n", "net.py"))}
    except PrunerError as exc:
        answer = {"error": str(exc)}
    uploads = Path(os.environ["PRUNER_RUNS_DIR"]) / "uploads"
    answer["left"] = sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []
    print(json.dumps(answer))
"""


def test_save_upload_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare, "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                           capture_output=True, text=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"no private mount namespace for a small tmpfs here ({probe.stderr.strip() if probe else 'no unshare'})")
    mount = [unshare, "-rm", "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{disk}" && exec "$0" "$@"']
    out = python(SAVE, env={"PRUNER_RUNS_DIR": str(disk / "runs")}, prefix=mount)
    uploads = disk / "runs" / "uploads"
    assert out["error"] == (f"the disk holding {uploads} is full (No space left on device); free space and upload "
                            "net.py again"), out
    assert out["left"] == [], out                                      # the partial .tmp was removed


def test_save_upload_that_cannot_write_is_one_line_and_leaves_nothing(tmp_path):
    out = python(SAVE, env={"PRUNER_RUNS_DIR": str(tmp_path / "runs"), "FSIZE_LIMIT": str(64 * 1024)})
    uploads = tmp_path / "runs" / "uploads"
    assert out["error"] == (f"{uploads} could not be written (File too large); free space or fix the folder's "
                            "permissions and upload net.py again"), out
    assert out["left"] == [], out
    assert not list(uploads.iterdir())
