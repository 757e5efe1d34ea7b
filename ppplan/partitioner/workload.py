"""Request shapes: prompt and output lengths as distributions, parsed from options and workload files.

A :class:`TokenDist` is either a histogram of (tokens, weight) or a mean with a standard deviation.
Mean ± sd stands for a lognormal distribution: token counts are positive and right-skewed (a few
very long prompts), which a normal distribution with a large sd is not. ``sd = 0`` is a fixed length.

Accepted text (``--prompt-tokens`` / ``--output-tokens``): ``4000``, ``4000±1000``, ``4000+-1000``,
``4000+/-1000``. A ``--workload FILE`` holds JSON::

    {"prompt_tokens": {"histogram": [[512, 3], [4096, 1]]},   # or {"mean": m, "sd": s}, an int, "m±s"
     "output_tokens": 1000,
     "arrival": "poisson"}                                    # optional; Poisson is the only one modelled
"""

from __future__ import annotations

import json
import math
import random
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from ppplan.core.errors import PpplanError

__all__ = ["MAX_TOKENS", "TokenDist", "Workload", "parse_token_dist", "parse_workload"]

MAX_TOKENS = 10_000_000
"""Largest token count accepted anywhere in a workload (far beyond any model's context)."""
MAX_BINS = 10_000
"""Largest number of histogram bins in a workload file."""
ARRIVALS = ("poisson",)
POINTS = 8
"""Equally likely points of :meth:`TokenDist.points`."""
NOT_SHOWN = "…"  # stands for a value too large to echo

_STD_NORMAL = NormalDist()
_TEXT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(?:(?:±|\+-|\+/-)\s*([0-9]+(?:\.[0-9]*)?)\s*)?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenDist:
    """A distribution of token counts (prompt or output length per request), tokens.

    With ``histogram`` (``(tokens, weight)`` pairs, weights need not sum to 1) the histogram is the
    distribution and ``mean``/``sd`` must be its moments (build it with :meth:`from_histogram`).
    Without, it is lognormal with this ``mean`` and ``sd`` (fixed when ``sd == 0``).
    """

    mean: float
    sd: float = 0.0
    histogram: tuple[tuple[int, float], ...] | None = None
    _cum: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)
    _points: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and 1 <= self.mean <= MAX_TOKENS):
            raise ValueError(f"TokenDist.mean must be in [1, {MAX_TOKENS}], got {self.mean!r}")
        if not (math.isfinite(self.sd) and self.sd >= 0):
            raise ValueError(f"TokenDist.sd must be finite and >= 0, got {self.sd!r}")
        if self.histogram is not None:
            self._init_histogram()
        pts = [self.quantile((i + 0.5) / POINTS) for i in range(POINTS)]
        scale = self.mean * POINTS / math.fsum(pts)
        object.__setattr__(self, "_points", tuple(p * scale for p in pts))

    def _init_histogram(self) -> None:
        assert self.histogram is not None
        if not self.histogram or any(t < 1 or w < 0 for t, w in self.histogram):
            raise ValueError("TokenDist.histogram needs (tokens >= 1, weight >= 0) pairs")
        hist = tuple(sorted((int(t), float(w)) for t, w in self.histogram))  # quantiles need ascending tokens
        total = math.fsum(w for _, w in hist)
        if not total > 0:
            raise ValueError("TokenDist.histogram weights sum to 0")
        acc, cum = 0.0, []
        for _, w in hist:
            acc += w / total
            cum.append(acc)
        object.__setattr__(self, "histogram", hist)
        object.__setattr__(self, "_cum", tuple(cum))

    @classmethod
    def fixed(cls, tokens: float) -> TokenDist:
        """Every request has ``tokens`` tokens."""
        return cls(mean=float(tokens))

    @classmethod
    def from_histogram(cls, pairs: list[tuple[int, float]] | tuple[tuple[int, float], ...]) -> TokenDist:
        """The distribution of a histogram of ``(tokens, weight)``; equal token counts are merged."""
        merged: dict[int, float] = {}
        for t, w in pairs:
            merged[int(t)] = merged.get(int(t), 0.0) + float(w)
        hist = tuple(sorted((t, w) for t, w in merged.items() if w > 0))
        total = math.fsum(w for _, w in hist)
        if not hist or not total > 0:
            raise ValueError("TokenDist.from_histogram: no positive weight")
        mean = math.fsum(t * w for t, w in hist) / total
        var = max(0.0, math.fsum(t * t * w for t, w in hist) / total - mean * mean)
        return cls(mean=mean, sd=math.sqrt(var), histogram=hist)

    @property
    def cv2(self) -> float:
        """Squared coefficient of variation, (sd / mean)²."""
        return (self.sd / self.mean) ** 2

    def points(self) -> tuple[float, ...]:
        """``POINTS`` equally likely token counts standing for the distribution (its quantiles at
        (i + ½) / POINTS, scaled to keep the mean), ascending: for expectations and quantiles of
        functions of the length in the closed-form queueing model."""
        return self._points

    def second_moment(self) -> float:
        """E[tokens²], tokens²."""
        return self.mean * self.mean + self.sd * self.sd

    def _lognormal(self) -> tuple[float, float]:
        """(mu, sigma) of the log of a lognormal with this mean and sd."""
        sigma2 = math.log1p(self.cv2)
        return math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 < q < 1) of the token count, tokens."""
        if not 0 < q < 1:
            raise ValueError(f"quantile q must be in (0, 1), got {q!r}")
        if self.histogram is not None:
            return float(self.histogram[min(bisect_left(self._cum, q), len(self.histogram) - 1)][0])
        if self.sd == 0:
            return self.mean
        mu, sigma = self._lognormal()
        return math.exp(mu + sigma * _STD_NORMAL.inv_cdf(q))

    def sample(self, rng: random.Random, n: int) -> list[int]:
        """``n`` token counts (each ≥ 1) drawn with ``rng``."""
        if self.histogram is not None:
            return rng.choices([t for t, _ in self.histogram], cum_weights=self._cum, k=n)
        if self.sd == 0:
            return [max(1, round(self.mean))] * n
        mu, sigma = self._lognormal()
        return [min(MAX_TOKENS, max(1, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]

    def max_tokens(self) -> int:
        """A tail bound, tokens: the histogram's largest count, else the 99th percentile."""
        if self.histogram is not None:
            return self.histogram[-1][0]
        return min(MAX_TOKENS, math.ceil(self.quantile(0.99) - 1e-9))

    def describe(self) -> str:
        """Short text for plan headers: ``4000``, ``4000±1000`` or ``hist(12 bins, mean 3800)``."""
        if self.histogram is not None:
            return f"hist({len(self.histogram)} bins, mean {self.mean:.0f})"
        return f"{self.mean:g}" if self.sd == 0 else f"{self.mean:g}±{self.sd:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The request shape: prompt and output length distributions, Poisson arrivals."""

    prompt: TokenDist
    output: TokenDist
    arrival: str = "poisson"


def _checked_dist(mean: float, sd: float, field_: str, value: Any) -> TokenDist:
    if not (math.isfinite(mean) and 1 <= mean <= MAX_TOKENS):
        raise PpplanError(field_, value, f"the mean must be a token count from 1 to {MAX_TOKENS}")
    if not (math.isfinite(sd) and 0 <= sd <= MAX_TOKENS):
        raise PpplanError(field_, value, f"the standard deviation must be from 0 to {MAX_TOKENS} tokens")
    return TokenDist(mean=mean, sd=sd)


def parse_token_dist(text: str, field: str) -> TokenDist:
    """``"4000"``, ``"4000±1000"``, ``"4000+-1000"`` or ``"4000+/-1000"`` (tokens, mean ± sd).

    Raises:
        PpplanError: naming ``field`` when the text is not of that form or out of range.
    """
    m = _TEXT.match(text) if isinstance(text, str) else None
    if m is None:
        raise PpplanError(field, text, "must be a token count or mean±sd, e.g. 4000 or 4000±1000")
    return _checked_dist(float(m.group(1)), float(m.group(2) or 0.0), field, text)


def _number(value: Any, field_: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PpplanError(field_, value, "must be a number")
    return float(value)


def _histogram(value: Any, field_: str) -> TokenDist:
    if not isinstance(value, list) or not value:
        raise PpplanError(field_, value, "must be a non-empty list of [tokens, weight] pairs")
    if len(value) > MAX_BINS:
        raise PpplanError(field_, NOT_SHOWN, f"has {len(value)} bins; at most {MAX_BINS}")
    pairs = []
    for i, pair in enumerate(value):
        where = f"{field_}[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise PpplanError(where, pair, "must be a [tokens, weight] pair")
        tokens, weight = pair
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
            raise PpplanError(where, pair, f"tokens must be an integer from 1 to {MAX_TOKENS}")
        w = _number(weight, where)
        if not (math.isfinite(w) and w >= 0):
            raise PpplanError(where, pair, "weight must be a finite number >= 0")
        pairs.append((tokens, w))
    if not math.fsum(w for _, w in pairs) > 0:
        raise PpplanError(field_, value, "the weights must not all be 0")
    return TokenDist.from_histogram(pairs)


def _dist(value: Any, field_: str) -> TokenDist:
    if isinstance(value, str):
        return parse_token_dist(value, field_)
    if isinstance(value, int) and not isinstance(value, bool):
        return _checked_dist(float(value), 0.0, field_, value)
    if not isinstance(value, dict):
        raise PpplanError(field_, value, 'must be a token count, "mean±sd", {"mean": m, "sd": s} or {"histogram": …}')
    keys = set(value)
    if keys == {"histogram"}:
        return _histogram(value["histogram"], f"{field_}.histogram")
    if "mean" in keys and keys <= {"mean", "sd"}:
        return _checked_dist(
            _number(value["mean"], f"{field_}.mean"), _number(value.get("sd", 0), f"{field_}.sd"), field_, value
        )
    extra = sorted(keys - {"mean", "sd", "histogram"})
    rule = f"unknown key {extra[0]!r}" if extra else "give either histogram or mean (with an optional sd), not both"
    raise PpplanError(field_, value, rule + '; expected {"histogram": [[tokens, weight], …]} or {"mean": m, "sd": s}')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_workload(text: str, field: str = "workload") -> Workload:
    """The :class:`Workload` of the JSON text of a ``--workload FILE``.

    Raises:
        PpplanError: naming the offending key (``workload.prompt_tokens.histogram[2]``) and the rule.
    """
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise PpplanError(field, rule=f"is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PpplanError(field, data, 'must be a JSON object with "prompt_tokens" and "output_tokens"')
    unknown = sorted(set(data) - {"prompt_tokens", "output_tokens", "arrival"})
    if unknown:
        raise PpplanError(
            f"{field}.{unknown[0]}", data[unknown[0]], "unknown key; allowed: prompt_tokens, output_tokens, arrival"
        )
    for key in ("prompt_tokens", "output_tokens"):
        if key not in data:
            raise PpplanError(f"{field}.{key}", rule="is required")
    arrival = data.get("arrival", "poisson")
    if arrival not in ARRIVALS:
        raise PpplanError(f"{field}.arrival", arrival, f"must be one of: {', '.join(ARRIVALS)}")
    return Workload(
        prompt=_dist(data["prompt_tokens"], f"{field}.prompt_tokens"),
        output=_dist(data["output_tokens"], f"{field}.output_tokens"),
        arrival=arrival,
    )
