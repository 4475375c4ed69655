"""The Streamlit studio's helpers: chart builders, run views, shared state and form widgets.

``studio.charts`` and ``studio.events`` are pure (no Streamlit): figures and progress are
computed from event lists and dicts, so they are unit-tested without a browser.
``studio.state`` and ``studio.forms`` hold the Streamlit parts shared by the pages.
"""
