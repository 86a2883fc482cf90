import pytest

from loraops.evaluate.stats import Estimate, bootstrap_mean, paired_difference


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    values = [1.0] * 60 + [0.0] * 40
    est = bootstrap_mean(values)
    assert est.mean == pytest.approx(0.6) and est.n == 100
    assert est.low < 0.6 < est.high
    assert 0.08 < est.high - est.low < 0.22  # ~ 2 x 1.96 x sqrt(0.24 / 100) = 0.19
    assert bootstrap_mean(values) == est  # seeded: the same scores give the same interval


def test_paired_difference_of_models_that_agree_everywhere_is_exactly_zero():
    a = [1.0, 0.0, 1.0, 1.0, 0.0] * 10
    assert paired_difference(a, a) == Estimate(0.0, 0.0, 0.0, 50)
    # unpaired, two models at 60% would have a wide interval; paired, a consistent +1 on 5 of 50 is narrow
    b = list(a)
    for i in (1, 4, 6, 9, 11):
        b[i] = 1.0
    est = paired_difference(b, a)
    assert est.mean == pytest.approx(0.1) and est.low > 0.0


def test_paired_difference_needs_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        paired_difference([1.0], [1.0, 0.0])
    assert bootstrap_mean([]) == Estimate(0.0, 0.0, 0.0, 0)
