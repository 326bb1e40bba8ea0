"""POST /embeddings: vectors for a batch of texts, with its spending bounded.

A request is judged before any model call: its size (EMBEDDINGS_MAX_INPUTS inputs and
EMBEDDINGS_MAX_CHARS characters: 422 over either), its model (the rule of chat's model
choice, with EMBEDDING_MODEL as the default: 422), and the caller's quota (its inputs'
tokens, ~4 characters a token, reserved on the caller's day at once, so a request is
admitted whole or refused whole: 429). Then batch after batch, each takes its share from
the shared model rate limits before it is sent and settles its real usage when it comes
back; a batch that fails, and the ones never sent, give their share back. So a failure
midway charges the batches that were answered, and nothing more.
"""

from __future__ import annotations

import time
from collections import Counter

from llmstream.auth import Principal
from llmstream.deps import Deps
from llmstream.exceptions import InputTooLarge, ModelUnavailable, QuotaExceeded
from llmstream.limits import text_tokens
from llmstream.models import Embedding, EmbeddingsRequest, EmbeddingsResponse
from llmstream.retry import describe
from llmstream.settings import Settings, choose_model


def check_size(settings: Settings, texts: list[str]) -> None:
    if len(texts) > settings.embeddings_max_inputs:
        raise InputTooLarge(
            f"{len(texts)} inputs; at most {settings.embeddings_max_inputs} a request"
        )
    chars = sum(len(t) for t in texts)
    if chars > settings.embeddings_max_chars:
        raise InputTooLarge(
            f"{chars} characters of input; at most {settings.embeddings_max_chars} a request"
        )


def embed(deps: Deps, user: Principal, request: EmbeddingsRequest) -> EmbeddingsResponse:
    """Embed a batch of texts, split to the model's batch limit; order is kept."""
    settings = deps.settings
    check_size(settings, request.input)
    model = choose_model(settings, request.model, default=settings.embedding_model)
    tokens = [text_tokens(t) for t in request.input]
    at = time.time()
    reserved = deps.quotas.admit(user.sub, sum(tokens), at)
    held = reserved or 0  # what is still reserved and not yet settled (0: no daily quota)
    size = settings.embeddings_batch_size
    data: list[Embedding] = []
    usage: Counter[str] = Counter()
    batches = 0
    # openai is imported here, not at the module's top: POST /chat never calls the model,
    # and importing the SDK is most of the api function's cold start.
    from openai import OpenAIError

    try:
        for start in range(0, len(request.input), size):
            estimate = sum(tokens[start : start + size])
            _take_capacity(deps, estimate)
            try:
                answer = deps.openai.embeddings.create(
                    model=model, input=request.input[start : start + size]
                )
            except OpenAIError as e:
                deps.limits.settle(estimate, 0)
                raise ModelUnavailable(f"model error: {describe(e)}") from e
            used = int(answer.usage.total_tokens)
            deps.limits.settle(estimate, used)
            deps.quotas.settle(user.sub, estimate, used, at)
            held -= estimate
            batches += 1
            for item in sorted(answer.data, key=lambda d: d.index):
                data.append(Embedding(index=start + item.index, embedding=item.embedding))
            usage.update({k: int(v) for k, v in answer.usage.model_dump().items() if v is not None})
    finally:
        # The batches not answered (a failure, a refusal midway) spent nothing.
        deps.quotas.settle(user.sub, held, 0, at)
    return EmbeddingsResponse(model=model, data=data, usage=dict(usage), batches=batches)


def _take_capacity(deps: Deps, estimate: int) -> None:
    """One request and the batch's tokens from the shared model rate limits; without room
    now, the caller is told when to come back (429), as a chat request's task would wait."""
    wait = deps.limits.acquire(estimate)
    if wait > 0:
        raise QuotaExceeded(
            f"the model's shared rate limit is reached; retry in {wait:.0f} s",
            retry_after=wait,
        )
