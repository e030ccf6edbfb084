"""The Streamlit dashboard: a thin client of the copd REST API (entry point: ui/app.py)."""
