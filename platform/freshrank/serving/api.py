"""Request and response bodies of the ranking endpoint (pydantic: validated at the edge)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_CANDIDATES = 1000
MAX_ID_LENGTH = 128
MAX_QUERY_LENGTH = 512


class Candidate(BaseModel):
    """An item that may be shown for the search."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    category: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    brand: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class RankRequest(BaseModel):
    """A search to rank: who searched, for what, and the candidate items."""

    model_config = ConfigDict(extra="forbid")

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


class ModelStatus(BaseModel):
    """What a replica is serving."""

    model_version: int | None
    pinned_version: int | None = Field(
        description="Pinned version (Serve user_config first, else the registry's PINNED)"
    )
    replica: str | None = Field(default=None, description="Serve replica id that answered")
    watermark: float | None
    loaded_at: float | None
    swaps: int
    last_error: str | None
