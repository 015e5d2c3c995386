"""JSON shapes of the REST API, declared once so the OpenAPI description matches what is sent."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Hit(BaseModel):
    """One result of a search."""

    rank: int = Field(description="1 for the most similar item")
    id: int = Field(description="catalogue id; search from it with the form field `id`")
    score: float = Field(description="cosine similarity, at most 1")
    category: str | None = Field(description="its category; null in a catalogue without categories")
    name: str = Field(description="file name of the item's image (the server's folders are not shown)")
    split: str | None = None
    item_id: str | None = Field(default=None, description="garment identity, where the catalogue has one")
    image_url: str = Field(description="where to fetch the item's image")
    group_size: int | None = Field(default=None, description="with `collapse`: how many catalogue items this "
                                                             "result stands for (itself and its near-duplicates)")


class QueryInfo(BaseModel):
    """What was searched for: an uploaded photo, a catalogue item, a text, or a photo and a text."""

    kind: Literal["upload", "item", "text"]
    text: str | None = Field(default=None, description="the text searched for (alone, or mixed with the upload)")
    filename: str | None = Field(default=None, description="upload: the name the client gave")
    size_bytes: int | None = Field(default=None, description="upload: its size")
    width: int | None = None
    height: int | None = None
    id: int | None = Field(default=None, description="item: its catalogue id")
    category: str | None = Field(default=None, description="item: its category")
    image_url: str | None = Field(default=None, description="item: where to fetch its image")


class SearchResponse(BaseModel):
    query: QueryInfo
    k: int
    category: str | None = Field(description="the category filter, or null for all")
    results: list[Hit]
    collapse: bool = Field(default=False, description="whether near-duplicates were folded into one result")
    took_ms: float = Field(description="server time for decoding, encoding and ranking")


class CopiesResponse(BaseModel):
    """The catalogue items an uploaded photo is a near-duplicate of."""

    threshold: float = Field(description="the cosine at or above which two photos count as near-duplicates")
    copies: list[Hit] = Field(description="best first; empty when the photo has no copy in the catalogue")
    took_ms: float


class CategoryCount(BaseModel):
    name: str
    count: int


class CategoriesResponse(BaseModel):
    categories: list[CategoryCount]
    total: int = Field(description="items in the index")


class Health(BaseModel):
    status: Literal["ok"]
    ready: bool = Field(description="whether the index is open and warmed (see /ready)")
    pid: int = Field(description="the answering server process (one of several with --workers)")
    items: int
    categories: int
    encoder: str
    dim: int
    max_k: int
    max_upload_bytes: int
    max_pixels: int
    text_search: bool = Field(description="whether the index's encoder has a text tower (the `text` field)")


class Readiness(BaseModel):
    ready: bool
    detail: str = Field(description="'ready', 'warming up', or why the index failed to load")
    items: int | None = Field(default=None, description="items in the index state being searched")
    generation: int | None = Field(default=None, description="that state's commit number in its folder")


class AddedItem(BaseModel):
    """An item added over REST, searchable from now on."""

    id: int = Field(description="its catalogue id")
    category: str | None
    split: str | None = None
    item_id: str | None = None
    attributes: list[str] = Field(default_factory=list)
    name: str = Field(description="file name of its photo on the server")
    image_url: str
    took_ms: float = Field(description="server time for reading, encoding and committing it")


class DeletedItem(BaseModel):
    """An item deleted over REST: no search returns it from now on."""

    id: int
    deleted: bool
    took_ms: float


class ErrorBody(BaseModel):
    detail: str
