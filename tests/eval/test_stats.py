import math

import pytest
from scipy.stats import binomtest

from transferlab.eval.stats import format_rate, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (8, 10), (10, 10), (50, 100), (37, 500), (1, 3)])
def test_wilson_matches_scipy(k, n):
    lo, hi = wilson_interval(k, n)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)


def test_wilson_known_value():
    # 8/10: Wilson 95% interval (0.4902, 0.9433) as tabulated in Newcombe (1998), method 3
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


def test_wilson_edge_cases():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    assert format_rate(0, 0).startswith("n/a")
