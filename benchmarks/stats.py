"""Summary statistics shared by the benchmarks and the demo."""
from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation; 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    x = (len(ordered) - 1) * q
    lo, hi = int(x), min(int(x) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (x - lo)


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all values are equal, 1/n when one value has it all."""
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0
