"""The status machine and the spec models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runner.models import JobStatus, StepSpec, parse_quantity
from runner.transitions import legal_path

S = JobStatus


def test_transition_table_basics() -> None:
    assert S.CREATED.can_transition_to(S.PENDING)
    assert not S.CREATED.can_transition_to(S.COMPLETED)
    assert not S.PAUSING.can_transition_to(S.CANCELLING)
    assert all(s.can_transition_to(s) for s in S)
    assert not any(S.COMPLETED.can_transition_to(s) for s in S if s != S.COMPLETED)


@pytest.mark.parametrize(
    ("source", "target", "path"),
    [
        (S.ACTIVE, S.COMPLETED, (S.COMPLETED,)),
        (S.PAUSED, S.ERROR, (S.ACTIVE, S.ERROR)),
        (S.PAUSED, S.COMPLETED, (S.ACTIVE, S.COMPLETED)),
        (S.PAUSED, S.CANCELLED, (S.CANCELLING, S.CANCELLED)),
        (S.PAUSING, S.CANCELLED, (S.PAUSED, S.CANCELLING, S.CANCELLED)),
        (S.RESUMING, S.CANCELLED, (S.CANCELLING, S.CANCELLED)),
        (S.CREATED, S.COMPLETED, (S.ACTIVE, S.COMPLETED)),
        (S.COMPLETED, S.ERROR, ()),
    ],
)
def test_legal_paths(source: JobStatus, target: JobStatus, path: tuple[JobStatus, ...]) -> None:
    assert legal_path(source, target) == path
    current = source
    for status in path:
        assert current.can_transition_to(status)
        current = status


@pytest.mark.parametrize(
    ("text", "value"), [("250m", 0.25), ("1.5", 1.5), ("128Mi", 128 * 2**20), ("1Gi", 2**30), ("512M", 512e6)]
)
def test_quantities(text: str, value: float) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1.5.5", "-1", "10Xi"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_environment_needs_exactly_one_source() -> None:
    base = {"name": "ok-name", "executor": {"provider": "subprocess", "command": ["true"]}}
    StepSpec.model_validate({**base, "environment": [{"name": "A", "value": "1"}]})
    for bad in ({"name": "A"}, {"name": "A", "value": "1", "from_secret": {"name": "s"}}):
        with pytest.raises(ValidationError):
            StepSpec.model_validate({**base, "environment": [bad]})
