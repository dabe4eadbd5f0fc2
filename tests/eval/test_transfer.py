import numpy as np
import pandas as pd
import pytest

from transferlab.eval.transfer import BEST_STEP, best_step_loo, summarise


def test_best_step_leave_one_out_by_hand():
    # steps 1..3; step 2 is best overall, but image c is only fooled at step 3
    fooled = pd.DataFrame(
        {1: [True, False, False, False], 2: [True, True, False, True], 3: [False, True, True, False]},
        index=["a", "b", "c", "d"],
    )
    # others' best step: a -> step 2 (b,d: 2 vs 3: b,c = 2; tie broken by first) fooled; b -> 2 (a,d) fooled;
    # c -> 2 (a,b,d = 3) not fooled; d -> 2 (a,b = 2 vs 3: b,c = 2, first max) fooled
    assert best_step_loo(fooled) == (3, 4)


def test_best_step_cannot_exceed_any_step_oracle():
    rng = np.random.default_rng(0)
    m = pd.DataFrame(rng.random((50, 6)) < 0.4)
    k, n = best_step_loo(m)
    assert n == 50 and k <= m.any(axis=1).sum()


def test_summarise_rates_and_best_step_rows():
    records = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "a", "b", "c"],
            "attack": "pgd",
            "method": "pgd",
            "source": "s",
            "target": ["s", "s", "s", "t", "t", "t"],
            "target_clean_correct": [True, True, True, True, False, True],
            "fooled": [True, True, False, True, True, False],
        }
    )
    attacks = {"pgd": {"norm": "linf", "eps": 4, "alpha": 1, "steps": 2}}
    steps = pd.DataFrame(
        {
            "image_id": ["a", "c", "a", "c"],
            "step": [1, 1, 2, 2],
            "target": "t",
            "fooled": [False, True, True, False],
        }
    )
    res = summarise(records, attacks, {("pgd", "s"): steps}).set_index(["target", "metric"])
    assert res.loc[("s", "transfer_success"), "success_rate"] == pytest.approx(2 / 3)
    assert res.loc[("t", "transfer_success"), "n"] == 2  # over the images t gets right clean
    assert res.loc[("t", "error_rate"), "n"] == 3 and res.loc[("t", "error_rate"), "successes"] == 2
    assert res.loc[("t", BEST_STEP), "n"] == 2
    assert ("s", BEST_STEP) not in res.index
