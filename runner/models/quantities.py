"""Kubernetes quantities (resources.limits/requests, shm_size): '250m', '1.5', '128Mi', '1Gi'."""

from __future__ import annotations

import math
import re

_QUANTITY = re.compile(r"([+]?(?:\d+|\d*\.\d+)(?:[eE][+-]?\d+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?")
_SUFFIX_FACTOR: dict[str, float] = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str) -> float:
    """Parse a Kubernetes quantity ('250m', '1.5', '128Mi', '1Gi', '512M') into a plain number."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. '250m', '1.5', '128Mi', '1Gi')")
    value = float(match.group(1)) * _SUFFIX_FACTOR[match.group(2) or ""]
    if not math.isfinite(value):  # "1e400" is a float's infinity: no machine has that much
        raise ValueError(f"{text!r} is too large a quantity")
    return value
