"""Request and response bodies of the ranking endpoint (pydantic: validated at the edge).

Requests are validated strictly (``strict=True``): a JSON value of the wrong type is refused
with a 422 naming the field, never coerced (``"price": true`` and ``"price": "5"`` are not
numbers, ``"user_id": 7`` is not a string); an integer is still a number (``"price": 5``).
The fast path's decoder (``serving.wire``) accepts exactly the same bodies.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_CANDIDATES = 1000
MAX_ID_LENGTH = 128
MAX_QUERY_LENGTH = 512


class Candidate(BaseModel):
    """An item that may be shown for the search."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    category: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    brand: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class RankRequest(BaseModel):
    """A search to rank: who searched, for what, and the candidate items."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    query: str = Field(default="", max_length=MAX_QUERY_LENGTH)
    device: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)


class ScoredItem(BaseModel):
    """One candidate with its relevance score and rank (0 = best)."""

    item_id: str
    score: float
    rank: int


class RankResponse(BaseModel):
    """The candidates, best first, and the model version that scored them."""

    model_version: int
    ranked: list[ScoredItem]


class FailedVersion(BaseModel):
    """A version a replica could not load: why, and when it is tried again (sooner when its
    files change)."""

    version: int
    error: str
    failed_at: float = Field(description="Unix time of the last failure")
    attempts: int
    retry_in_s: float = Field(description="Seconds until the next try at the latest")


class ModelStatus(BaseModel):
    """What a replica is serving, and why."""

    model_version: int | None
    pinned_version: int | None = Field(
        description="Pinned version (Serve user_config first, else the registry's PINNED)"
    )
    replica: str | None = Field(default=None, description="Serve replica id that answered")
    watermark: float | None
    loaded_at: float | None
    swaps: int
    last_error: str | None
    target_version: int | None = Field(
        default=None, description="The version this replica should serve (champion or pin)"
    )
    serving_reason: str | None = Field(
        default=None,
        description="Why it serves what it serves: 'champion', 'pinned', or 'fallback: "
        "champion v12 failed to load (...); serving v11'",
    )
    fallback: bool = Field(
        default=False, description="True while it serves another version than target_version"
    )
    failed_versions: list[FailedVersion] = Field(default_factory=list)


class Health(BaseModel):
    """``/healthz``: whether the replica can answer rankings (503 when it cannot)."""

    ok: bool
    model_version: int | None
    serving_reason: str | None = None
    fallback: bool = False


class ErrorBody(BaseModel):
    """An error answer (413, 503)."""

    error: str


class InvalidRequest(BaseModel):
    """A 422: what is wrong with the request, one line per problem, each naming its field."""

    error: str = Field(examples=["invalid request"])
    problems: list[str] = Field(examples=[["candidates.0.price: Input should be a valid number"]])


class ParseError(BaseModel):
    """A 400: the body could not be parsed at all."""

    detail: str = Field(examples=["There was an error parsing the body"])
