"""Plain functions behind `copd api` and `copd db upgrade` (the Typer wiring lives in copd/cli.py)."""

from __future__ import annotations

from contract.settings import get_settings
from server.db import head_revision, upgrade


def serve(host: str, port: int) -> None:
    """Run the API with uvicorn; prints where the admin token comes from."""
    import uvicorn

    from server.app import create_app

    settings = get_settings()
    where = "COPD_API_TOKEN" if settings.api_token else f"the file {settings.token_file} (created on first start, mode 0600)"
    print(f"copd API on http://{host}:{port}  (docs at /docs; admin token: {where})", flush=True)
    uvicorn.run(create_app(settings), host=host, port=port)


def db_upgrade() -> None:
    """Migrate the configured database (COPD_DATABASE_URL, or the SQLite file in COPD_DATA_DIR) to the newest schema."""
    settings = get_settings()
    upgrade(settings.db_url)
    print(f"database {settings.db_url.split('@')[-1]} is at migration {head_revision()}")
