"""The dashboard pages, one file per page; Streamlit runs them as scripts (see ui/app.py)."""
