"""Bearer tokens: hashing, roles, and the admin token (COPD_API_TOKEN, or generated into the data folder)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from contract.settings import Settings

log = logging.getLogger("copd.server")

RANK = {"read": 0, "write": 1, "admin": 2}
ADMIN_NAME = "admin"
MIN_LENGTH = 16
PLACEHOLDERS = {"changeme", "changethis", "secret", "password", "token", "admin", "test", "example", "default"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (recorded as the author of changes) and its role."""

    name: str
    role: str


def hash_token(token: str) -> str:
    """sha256 hex of a token; only this is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return "copd_" + secrets.token_urlsafe(32)


def placeholder_reason(token: str) -> str | None:
    """Why `token` is not acceptable as the admin token, or None."""
    plain = re.sub(r"[^a-z0-9]", "", token.lower())
    if plain in PLACEHOLDERS or plain.startswith(("changeme", "changethis")):
        return "it is a placeholder"
    if len(token) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    return None


def admin_token(settings: Settings) -> tuple[str, str]:
    """The admin token and where it came from; refuses placeholders, creates the token file on first start."""
    if settings.api_token is not None:
        if (why := placeholder_reason(settings.api_token)) is not None:
            raise RuntimeError(f"COPD_API_TOKEN is refused: {why}; set a random value of at least {MIN_LENGTH} "
                               "characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                               f"or unset it to have one generated into {settings.token_file}")
        return settings.api_token, "COPD_API_TOKEN"
    return _token_file(settings.token_file), str(settings.token_file)


def _token_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); set to 0600", path, mode)
            path.chmod(0o600)
        token = path.read_text().strip()
        if (why := placeholder_reason(token)) is not None:
            raise RuntimeError(f"{path} holds an unacceptable admin token ({why}); delete it to have one generated")
        return token
    token = new_token()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
