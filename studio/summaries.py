"""Model summaries built off the script thread, so a page can show a Stop while one is built.

A summary loads the dataset and builds the model in a child process
(:func:`pruner.model_summary.summary_in_child`); a user's model file may hang there. Each distinct
setting (:func:`studio.forms.summary_key`) gets one :class:`Build` in a server-wide registry
(``st.cache_resource``, shared by sessions like the JobManager): a thread waits on the child and
keeps its JSON answer (errors too, so a bad setting is not rebuilt on every rerun). A page waits a
moment for it (:data:`WAIT_ENV`, default :data:`DEFAULT_WAIT_S`), then shows the elapsed time and a
Stop, which kills the child. The last :data:`KEEP` answers are kept.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import streamlit as st

#: seconds a page waits for a summary before it shows "building…" with a Stop (tests raise it)
WAIT_ENV = "PRUNER_SUMMARY_WAIT_S"
DEFAULT_WAIT_S = 3.0
KEEP = 32


@dataclass
class Build:
    key: str
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: dict | None = None

    def run(self) -> None:
        from pruner.model_summary import summary_in_child

        try:
            self.result = summary_in_child(json.loads(self.key), cancel=self.cancel)
        except Exception as exc:  # noqa: BLE001 - e.g. the child could not be started: one line, never a traceback
            self.result = {"error": f"could not build the model summary ({type(exc).__name__}: {exc})"}
        finally:
            self.done.set()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._builds: OrderedDict[str, Build] = OrderedDict()

    def get(self, key: str) -> Build:
        """The build of ``key``, started when there is none."""
        with self._lock:
            build = self._builds.get(key)
            if build is None:
                build = self._builds[key] = Build(key)
                threading.Thread(target=build.run, name="model-summary", daemon=True).start()
                while len(self._builds) > KEEP:
                    old_key, old = next(iter(self._builds.items()))
                    if not old.done.is_set():   # never drop one still running (its Stop must keep working)
                        break
                    del self._builds[old_key]
            self._builds.move_to_end(key)
            return build

    def stop(self, key: str) -> None:
        with self._lock:
            build = self._builds.get(key)
        if build is not None:
            build.cancel.set()
            build.done.wait(10)

    def forget(self, key: str) -> None:
        """Drop ``key``'s answer, so the next :meth:`get` builds it again (Try again)."""
        with self._lock:
            build = self._builds.get(key)
            if build is not None and build.done.is_set():
                del self._builds[key]


@st.cache_resource
def registry() -> Registry:
    return Registry()


def wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV) or DEFAULT_WAIT_S))
    except ValueError:
        return DEFAULT_WAIT_S
