"""Request-shape distributions: the text and JSON forms users give, their errors, and the moments,
quantiles and samples the load models rely on."""

from __future__ import annotations

import json
import math
import random

import pytest

from ppplan.core.errors import PpplanError
from ppplan.partitioner.workload import MAX_TOKENS, TokenDist, Workload, parse_token_dist, parse_workload


@pytest.mark.parametrize(
    ("text", "mean", "sd"),
    [
        ("4000", 4000, 0),
        ("4000±1000", 4000, 1000),
        ("4000+-1000", 4000, 1000),
        ("4000+/-1000", 4000, 1000),
        (" 4000 ± 1000 ", 4000, 1000),
        ("512.5", 512.5, 0),
        ("1", 1, 0),
    ],
)
def test_parse_token_dist_accepts(text: str, mean: float, sd: float) -> None:
    d = parse_token_dist(text, "prompt_tokens")
    assert (d.mean, d.sd, d.histogram) == (mean, sd, None)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "-5", "0", "0.5", "4000±", "4000±-5", "4000 1000", "nan", "inf", "1e4", "4000±x", str(MAX_TOKENS + 1)],
)
def test_parse_token_dist_rejects_with_the_field(text: str) -> None:
    with pytest.raises(PpplanError) as e:
        parse_token_dist(text, "output_tokens")
    assert e.value.field == "output_tokens"
    assert e.value.value == text
    assert e.value.rule


def _wl(prompt: object, output: object = 100, **extra: object) -> Workload:
    return parse_workload(json.dumps({"prompt_tokens": prompt, "output_tokens": output, **extra}))


def test_parse_workload_forms() -> None:
    wl = _wl({"histogram": [[4096, 1], [512, 3], [512, 0]]}, {"mean": 800, "sd": 200}, arrival="poisson")
    assert wl.prompt.histogram == ((512, 3.0), (4096, 1.0))  # sorted, empty bins dropped
    assert wl.prompt.mean == pytest.approx((512 * 3 + 4096) / 4)
    assert wl.prompt.sd == pytest.approx(math.sqrt((512**2 * 3 + 4096**2) / 4 - wl.prompt.mean**2))
    assert (wl.output.mean, wl.output.sd, wl.arrival) == (800, 200, "poisson")
    assert _wl(2000, "300±50").output.sd == 50
    assert _wl({"mean": 2000}).prompt.sd == 0
    merged = _wl({"histogram": [[100, 1], [100, 1], [300, 2]]}).prompt
    assert merged.histogram == ((100, 2.0), (300, 2.0))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{", "workload"),
        ("[1, 2]", "workload"),
        ('{"prompt_tokens": NaN, "output_tokens": 1}', "workload"),
        ('{"prompt_tokens": 100}', "workload.output_tokens"),
        ('{"prompt_tokens": 100, "output_tokens": 10, "extra": 1}', "workload.extra"),
        ('{"prompt_tokens": 100, "output_tokens": 10, "arrival": "uniform"}', "workload.arrival"),
        ('{"prompt_tokens": true, "output_tokens": 10}', "workload.prompt_tokens"),
        ('{"prompt_tokens": 0, "output_tokens": 10}', "workload.prompt_tokens"),
        ('{"prompt_tokens": 100, "output_tokens": "ten"}', "workload.output_tokens"),
        ('{"prompt_tokens": {"mean": 100, "histogram": [[1, 1]]}, "output_tokens": 1}', "workload.prompt_tokens"),
        ('{"prompt_tokens": {"mean": 100, "p99": 5}, "output_tokens": 1}', "workload.prompt_tokens"),
        ('{"prompt_tokens": {"mean": "100"}, "output_tokens": 1}', "workload.prompt_tokens.mean"),
        ('{"prompt_tokens": {"mean": 100, "sd": -1}, "output_tokens": 1}', "workload.prompt_tokens"),
        ('{"prompt_tokens": {"histogram": []}, "output_tokens": 1}', "workload.prompt_tokens.histogram"),
        ('{"prompt_tokens": {"histogram": [[1, 1], [2]]}, "output_tokens": 1}', "workload.prompt_tokens.histogram[1]"),
        ('{"prompt_tokens": {"histogram": [[0, 1]]}, "output_tokens": 1}', "workload.prompt_tokens.histogram[0]"),
        ('{"prompt_tokens": {"histogram": [[1.5, 1]]}, "output_tokens": 1}', "workload.prompt_tokens.histogram[0]"),
        ('{"prompt_tokens": {"histogram": [[5, -1]]}, "output_tokens": 1}', "workload.prompt_tokens.histogram[0]"),
        ('{"prompt_tokens": {"histogram": [[5, 0]]}, "output_tokens": 1}', "workload.prompt_tokens.histogram"),
    ],
)
def test_parse_workload_rejects_naming_the_key(text: str, field: str) -> None:
    with pytest.raises(PpplanError) as e:
        parse_workload(text)
    assert e.value.field == field, e.value.message
    assert e.value.rule


def test_parse_workload_field_prefix_and_bin_limit() -> None:
    with pytest.raises(PpplanError) as e:
        parse_workload('{"prompt_tokens": -1, "output_tokens": 1}', field="--workload")
    assert e.value.field == "--workload.prompt_tokens"
    bins = [[i + 1, 1] for i in range(10_001)]
    with pytest.raises(PpplanError, match="at most"):
        _wl({"histogram": bins})


def test_lognormal_moments_quantiles_and_samples() -> None:
    d = TokenDist(mean=4000, sd=1000)
    assert d.second_moment() == 4000**2 + 1000**2
    qs = [d.quantile(q) for q in (0.1, 0.5, 0.9, 0.99)]
    assert qs == sorted(qs) and qs[1] < 4000 < qs[2]  # right-skewed: median below the mean
    assert d.max_tokens() == math.ceil(qs[3])
    xs = d.sample(random.Random(7), 20_000)
    assert min(xs) >= 1 and all(isinstance(x, int) for x in xs)
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    assert mean == pytest.approx(4000, rel=0.02) and sd == pytest.approx(1000, rel=0.05)
    assert sum(d.points()) / len(d.points()) == pytest.approx(4000)
    assert list(d.points()) == sorted(d.points())


def test_fixed_and_histogram_distributions() -> None:
    fixed = TokenDist.fixed(300)
    assert fixed.sample(random.Random(0), 3) == [300, 300, 300]
    assert fixed.quantile(0.9) == 300 and fixed.max_tokens() == 300 and fixed.cv2 == 0
    h = TokenDist.from_histogram([(100, 1), (1000, 3)])
    assert (h.quantile(0.2), h.quantile(0.3), h.quantile(0.99)) == (100, 1000, 1000)
    assert h.max_tokens() == 1000
    assert h.second_moment() == pytest.approx((100**2 + 3 * 1000**2) / 4)
    xs = h.sample(random.Random(1), 10_000)
    assert set(xs) == {100, 1000} and xs.count(1000) / len(xs) == pytest.approx(0.75, abs=0.02)
    assert sum(h.points()) / len(h.points()) == pytest.approx(h.mean)
    # the planner builds histograms unsorted: they are sorted on construction
    raw = TokenDist(mean=h.mean, sd=h.sd, histogram=((1000, 3.0), (100, 1.0)))
    assert raw.histogram == ((100, 1.0), (1000, 3.0)) and raw.quantile(0.2) == 100


def test_token_dist_rejects_bad_values() -> None:
    for kwargs in ({"mean": 0.5}, {"mean": math.nan}, {"mean": 10, "sd": -1}, {"mean": 10, "histogram": ()}):
        with pytest.raises(ValueError):
            TokenDist(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TokenDist(mean=4).quantile(1.0)
