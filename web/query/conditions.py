"""What a tree is lowered into, one condition per field: the statuses it lets through, its time
ranges, its string values, each with its AND / OR / NOT; and `Unsupported`, for what has none."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runner.models import JobStatus


class Unsupported(Exception):
    """A filter the store cannot evaluate exactly: answered with a 422 that says why."""


_ALL_STATUSES = frozenset(JobStatus)
FAR = 10**30  # beyond any timestamp in µs: the open ends of a range


@dataclass(frozen=True, slots=True)
class Statuses:
    """A condition on `status`: the statuses it lets through (exact for any expression)."""

    allowed: frozenset[JobStatus]

    def both(self, other: Statuses) -> Statuses:
        return Statuses(self.allowed & other.allowed)

    def either(self, other: Statuses) -> Statuses:
        return Statuses(self.allowed | other.allowed)

    def negated(self) -> Statuses:
        return Statuses(_ALL_STATUSES - self.allowed)

    @property
    def always(self) -> bool:
        return self.allowed == _ALL_STATUSES

    @property
    def never(self) -> bool:
        return not self.allowed


@dataclass(frozen=True, slots=True)
class Times:
    """A condition on a timestamp: disjoint inclusive µs ranges, in order (exact for any expression;
    the store takes one range)."""

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def of(ranges: Iterable[tuple[int, int]]) -> Times:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return Times(tuple(merged))

    def negated(self) -> Times:
        gaps, start = [], -FAR
        for lo, hi in self.ranges:
            gaps.append((start, lo - 1))
            start = hi + 1
        gaps.append((start, FAR))
        return Times.of(gaps)

    def either(self, other: Times) -> Times:
        return Times.of([*self.ranges, *other.ranges])

    def both(self, other: Times) -> Times:
        return self.negated().either(other.negated()).negated()

    @property
    def always(self) -> bool:
        return self.ranges == ((-FAR, FAR),)

    @property
    def never(self) -> bool:
        return not self.ranges


@dataclass(frozen=True, slots=True)
class Strings:
    """A condition on a string column: `x in among` (when set) and `x not in excluded` and every one
    of `containing` a substring of x in any case. A NULL (a job without a project) fails `among` and
    `containing` and passes `excluded`, as the store's NOT IN does."""

    among: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()
    containing: tuple[str, ...] = ()

    def both(self, other: Strings) -> Strings:
        if self.among is None:
            among = other.among
        else:
            among = self.among if other.among is None else self.among & other.among
        excluded = self.excluded | other.excluded
        containing = (*self.containing, *other.containing)
        if among is None:
            return Strings(None, excluded, containing)
        # A known set of values: the other conditions are evaluated on it.
        return Strings(
            among=frozenset(v for v in among if v not in excluded and all(contains(v, c) for c in containing))
        )

    def either(self, other: Strings) -> Strings:
        if self.never or other.always or self == other:
            return other
        if other.never or self.always:
            return self
        if self.containing or other.containing:
            raise Unsupported("an OR with a substring match (~, $like) on one side")
        if self.among is not None and other.among is not None:
            return Strings(among=self.among | other.among)
        if self.among is None and other.among is None:
            return Strings(excluded=self.excluded & other.excluded)
        among = self.among if self.among is not None else other.among
        excluded = other.excluded if self.among is not None else self.excluded
        return Strings(excluded=excluded - (among or frozenset()))

    def negated(self) -> Strings:
        if self.containing:
            raise Unsupported("a negated substring match (~, $like)")
        if self.among is not None:
            return Strings(excluded=self.among)
        return Strings(among=self.excluded)

    @property
    def always(self) -> bool:
        return self.among is None and not self.excluded and not self.containing

    @property
    def never(self) -> bool:
        return self.among is not None and not self.among


def contains(value: str, part: str) -> bool:
    # The reference's $like: a substring, in any case; `%` and `_` are plain characters.
    return part.lower() in value.lower()


FieldCondition = Statuses | Times | Strings
# Per field, what a row must satisfy (all of them); {}: every row; None: no row.
Conjunction = dict[str, FieldCondition] | None
