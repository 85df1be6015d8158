"""The intervals over seeds the findings scripts report (``softmax_theory.stats.mean_interval``)."""

import numpy as np
import pytest
from scipy import stats

from softmax_theory.stats import mean_interval


@pytest.mark.parametrize("n", [2, 3, 7])
def test_the_t_interval_is_scipys(n):
    x = np.random.default_rng(n).normal(1.0, 0.3, n)
    mean, half = mean_interval(x)
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx((lo + hi) / 2, rel=1e-12)
    assert half == pytest.approx((hi - lo) / 2, rel=1e-12)


def test_one_value_has_no_spread_and_none_is_refused():
    assert mean_interval([0.4]) == (0.4, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])
