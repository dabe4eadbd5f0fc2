import numpy as np
import pandas as pd
import pytest

from transferlab.eval.compare import gains_markdown, gains_over, paired_gain


def test_paired_gain_identical_outcomes_is_exactly_zero():
    a = np.array([1, 0, 1, 1, 0])
    assert paired_gain(a, a) == (0.0, 0.0, 0.0)


def test_paired_gain_value_and_interval():
    rng = np.random.default_rng(1)
    b = (rng.random(400) < 0.5).astype(float)
    a = np.maximum(b, (rng.random(400) < 0.3))  # a fools everything b fools, and more
    gain, lo, hi = paired_gain(a, b, n_boot=4000)
    assert gain == pytest.approx(a.mean() - b.mean())
    assert 0 < lo < gain < hi
    # pairing: the interval is narrower than treating the two rates as independent
    se_indep = np.sqrt(a.mean() * (1 - a.mean()) / 400 + b.mean() * (1 - b.mean()) / 400)
    assert (hi - lo) < 2 * 1.96 * se_indep


def test_gains_over_uses_images_the_target_gets_right():
    rec = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"] * 2,
            "attack": ["pgd"] * 3 + ["mi"] * 3,
            "source": "s",
            "target": "t",
            "target_clean_correct": [True, True, False] * 2,
            "fooled": [0, 1, 1, 1, 1, 1],
        }
    )
    g = gains_over(rec)
    assert len(g) == 1 and g.n.iloc[0] == 2
    assert g.gain.iloc[0] == pytest.approx(0.5) and g.baseline_rate.iloc[0] == pytest.approx(0.5)
    assert "+50.0" in gains_markdown(g)
    assert gains_over(rec, baseline="nosuch").empty
