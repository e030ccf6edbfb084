"""The vocabulary: GET /vocab — strategies, builtin domains, verifiers, statuses, unit kinds, metric keys."""

from __future__ import annotations

from contract.schemas import Vocab, vocab
from server.deps import Reader
from server.guard import router

api = router(tags=["vocab"])

_VOCAB = vocab()  # fixed for the life of the process


@api.get("/vocab", response_model=Vocab)
def get_vocab(_: Reader) -> Vocab:
    """Every name the server knows, so that the dashboard and other clients keep no list of their own."""
    return _VOCAB
