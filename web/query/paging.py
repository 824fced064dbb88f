"""Paging and sort of the list endpoints: `page`, `page_size` and `sort`, read from the query string."""

from __future__ import annotations

from multidict import MultiMapping
from pydantic import BaseModel, Field, ValidationError

from runner.models import JobSort, StepSort
from web.errors import InvalidRequest, validation_detail

_MAX_PAGE = 2**31 - 1
MAX_PAGE_SIZE = 10_000


class Paging(BaseModel):
    page: int = Field(default=1, gt=0, le=_MAX_PAGE)
    page_size: int = Field(default=25, gt=0, le=MAX_PAGE_SIZE)


class StepsQuery(Paging):
    sort: StepSort = StepSort.CREATED_AT


class JobsQuery(Paging):
    page_size: int = Field(default=10, gt=0, le=MAX_PAGE_SIZE)
    sort: JobSort = JobSort.CREATED_AT_DESC


def parse_paging[Q: BaseModel](model: type[Q], query: MultiMapping[str]) -> Q:
    values = {name: query[name] for name in model.model_fields if name in query}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["query"])) from None
