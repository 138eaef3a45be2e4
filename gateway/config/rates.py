"""Rate strings (`20/s`, `100/m`, `1000/h`): parsing, shared by routing.yaml limits and the relay.
A leaf module (no gateway imports) so the relay may use it too.
"""

from __future__ import annotations

import re
from typing import Final

RATE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)\s*")
PERIOD_S: Final = {"s": 1.0, "m": 60.0, "h": 3600.0}
EXPECTED: Final = "a rate like 20/s, 100/m or 1000/h"


def per_second(rate: str) -> float | None:
    """Requests per second, or None when `rate` is not a positive rate string."""
    found = RATE.fullmatch(rate)
    if found is None or float(found[1]) <= 0:
        return None
    return float(found[1]) / PERIOD_S[found[2]]
