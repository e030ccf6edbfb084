"""Tokens (admin): create a read or write token (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Response

from server import crud
from server.auth import ADMIN_NAME, hash_token, new_token
from server.deps import Admin, SessionDep
from server.guard import conflict, router
from server.schemas import MAX_ID, TokenCreate, TokenCreated, TokenPublic

api = router(tags=["tokens"])


@api.post("/tokens", status_code=201, response_model=TokenCreated,
          responses=conflict("A token of that name exists."))
def create_token(body: TokenCreate, session: SessionDep, _: Admin) -> TokenCreated:
    """The token is in this reply only; the server keeps its sha256."""
    token = new_token()
    tok = crud.create_token(session, name=body.name, role=body.role, token_hash=hash_token(token))
    return TokenCreated(id=tok.id, name=tok.name, role=tok.role, created_at=tok.created_at, token=token)


@api.get("/tokens", response_model=list[TokenPublic])
def list_tokens(session: SessionDep, _: Admin) -> list[TokenPublic]:
    return [TokenPublic.model_validate(t) for t in crud.list_tokens(session)]


@api.delete("/tokens/{token_id}", status_code=204, responses=conflict("That is the admin token."))
def delete_token(token_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep, _: Admin) -> Response:
    crud.delete_token(session, token_id=token_id, protected=[ADMIN_NAME])
    return Response(status_code=204)
