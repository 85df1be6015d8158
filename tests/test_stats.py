"""The intervals over seeds the findings scripts report (``softmax_theory.stats.mean_interval``)."""

import numpy as np
import pytest
from scipy import stats

from softmax_theory.stats import interval_text, mean_interval


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


def test_interval_text_is_the_mean_and_half_width_or_the_one_value():
    mean, half = mean_interval([1.0, 2.0, 4.0])
    assert interval_text([1.0, 2.0, 4.0]) == f"{mean:.3f} ± {half:.3f}"
    assert interval_text(iter([1.0, 2.0, 4.0]), ".3g", ".2g") == f"{mean:.3g} ± {half:.2g}"
    assert interval_text([0.25]) == "0.250"
