"""Measured pass costs for the draft-length policy: seconds of one model pass over n tokens.

`PassCost` is a table of this engine's own target passes on this machine (one clock read around
each), indexed by the tokens in the pass: exact n up to 64, then a quarter-octave grid. Between
measured sizes it interpolates; where nothing near was measured it is optimistic (the measured
size below plus `PRIOR_SLOPE` of it per extra token), so the policy tries a longer pass once,
measures it, and from then on knows. A CPU's cost curve is flat while weights dominate and
steepens once the pass is compute-bound; a line fitted through prefill and decode passes would
miss exactly the region that matters, so the table is not a fit.

`AffineCost` models a draft pass, whose sizes vary little: a + b n by weighted least squares.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

PRIOR_SLOPE = 1 / 32  # untried sizes: each extra token costs 1/32 of the pass below it
DECAY = 0.9  # per observation of a size: recent passes count most (the machine's load moves)
EXACT_UP_TO = 64


def bucket(n: int) -> int:
    """The table row of a pass over n tokens."""
    if n <= EXACT_UP_TO:
        return n
    return round(EXACT_UP_TO * 2 ** (round(4 * math.log2(n / EXACT_UP_TO)) / 4))


@dataclass
class PassCost:
    seconds_at: dict[int, float] = field(default_factory=dict)  # bucket -> decayed mean
    _sizes: list[int] = field(default_factory=list, repr=False)  # sorted buckets

    def observe(self, n: int, seconds: float) -> None:
        if not (n >= 1 and math.isfinite(seconds) and seconds > 0):
            return
        b = bucket(n)
        old = self.seconds_at.get(b)
        if old is None:
            bisect.insort(self._sizes, b)
            self.seconds_at[b] = seconds
        else:
            self.seconds_at[b] = DECAY * old + (1 - DECAY) * seconds

    @property
    def measured(self) -> bool:
        return bool(self._sizes)

    def __call__(self, n: int) -> float:
        """Seconds of a pass over n tokens (on a scale of 1 before any measurement)."""
        sizes = self._sizes
        if not sizes:
            return 1.0 + PRIOR_SLOPE * (n - 1)
        i = bisect.bisect_right(sizes, n)
        if i == 0:  # smaller than anything measured: no cheaper than it (costs only grow)
            return self.seconds_at[sizes[0]]
        lo = sizes[i - 1]
        t_lo = self.seconds_at[lo]
        optimistic = t_lo * (1 + PRIOR_SLOPE * (n - lo))
        if i == len(sizes):
            return optimistic
        hi = sizes[i]
        between = t_lo + (self.seconds_at[hi] - t_lo) * (n - lo) / (hi - lo)
        return min(between, optimistic)


@dataclass
class AffineCost:
    """seconds(n) = a + b n by exponentially weighted least squares over (n, seconds); with
    little spread in n the slope leans on `PRIOR_SLOPE` x the mean (weight `spread` tokens²)."""

    spread: float = 16.0
    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def observe(self, n: int, seconds: float) -> None:
        if not (n >= 1 and math.isfinite(seconds) and seconds > 0):
            return
        d = DECAY
        self.w, self.sx, self.sy = d * self.w + 1, d * self.sx + n, d * self.sy + seconds
        self.sxx, self.sxy = d * self.sxx + n * n, d * self.sxy + n * seconds

    @property
    def measured(self) -> bool:
        return self.w > 0

    def coefficients(self) -> tuple[float, float]:
        """(a, b) with a > 0, b >= 0; (0, 0) before any observation (drafting looks free
        until its first pass is measured)."""
        if not self.w:
            return 0.0, 0.0
        mx, my = self.sx / self.w, self.sy / self.w
        var = max(self.sxx / self.w - mx * mx, 0.0)
        cov = self.sxy / self.w - mx * my
        prior_b = PRIOR_SLOPE * my / (1 + PRIOR_SLOPE * mx)
        b = max((cov + self.spread * prior_b) / (var + self.spread), 0.0)
        a = my - b * mx
        if a <= 0:  # the line ran below zero: keep a small positive intercept
            a = my * 1e-3
            b = (my - a) / mx
        return a, b
