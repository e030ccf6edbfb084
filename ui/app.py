"""Dashboard entry point: `streamlit run ui/app.py` (or `copd ui --port P`); one page per file in ui/views/.

The page files are in `views/`, not `pages/`: Streamlit treats a `pages/` folder beside the entry script as a
v1 multipage app and would run the page files without this script (no st.navigation, no page config).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

try:
    import ui  # noqa: F401 - installed with the package (pip install -e .)
except ImportError:  # run from a checkout that is not installed: make `ui` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.common import client  # noqa: E402

st.set_page_config(page_title="copd", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page("views/runs.py", title="Runs", icon=":material/list:", default=True),  # served at /
    st.Page("views/new_run.py", title="New run", icon=":material/add:", url_path="new"),
    st.Page("views/run.py", title="Run", icon=":material/monitoring:", url_path="run"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
]

page = st.navigation(PAGES)
with st.sidebar:
    api = client()
    st.caption(f"API: `{api.base_url}`" + ("" if api.has_token else " — no token set"))
page.run()
