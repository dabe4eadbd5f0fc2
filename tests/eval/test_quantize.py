import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transferlab.eval.quantize import perturbation_norms, quantize


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps_levels=st.floats(0.0, 32.0),
    norm=st.sampled_from(["linf", "l2"]),
    size=st.integers(1, 12),
    spread=st.floats(0.0, 0.5),
)
def test_quantised_images_stay_in_the_ball(seed, eps_levels, norm, size, spread):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 256, (3, 3, size, size), generator=g).float() / 255
    # adversarial candidates anywhere (also outside the ball and outside [0,1])
    adv = clean + (torch.rand(clean.shape, generator=g) * 2 - 1) * spread
    d = 3 * size * size
    eps = eps_levels / 255 if norm == "linf" else eps_levels / 255 * math.sqrt(d)
    q = quantize(clean, adv, eps, norm)
    levels = q * 255
    assert torch.equal(levels, levels.round()), "not 8-bit valued"
    assert levels.min() >= 0 and levels.max() <= 255
    linf, l2 = perturbation_norms(clean, q)
    if norm == "linf":
        assert (linf <= eps * 255 + 1e-6).all()
    else:
        assert (l2 <= eps * 255 + 1e-4).all()


def test_rounding_not_truncation():
    clean = torch.zeros(1, 3, 2, 2)
    adv = clean + 2.6 / 255  # rounds to 3 levels; truncation would give 2
    q = quantize(clean, adv, 8 / 255, "linf")
    assert torch.all(q * 255 == 3)


def test_clip_back_into_ball_after_rounding():
    clean = torch.full((1, 3, 2, 2), 100 / 255)
    adv = clean + 4.6 / 255  # rounds to +5 levels, ball is 4 levels
    q = quantize(clean, adv, 4 / 255, "linf")
    assert torch.all((q * 255).round() == 104)


def test_l2_projection_keeps_direction_and_budget():
    clean = torch.full((1, 3, 4, 4), 128 / 255)
    adv = clean.clone()
    adv[0, 0, 0, 0] += 30 / 255
    adv[0, 1, 1, 1] -= 40 / 255  # norm 50 levels
    q = quantize(clean, adv, 25 / 255, "l2")
    delta = (q - clean) * 255
    assert delta.norm() <= 25 + 1e-4
    assert delta[0, 0, 0, 0] > 0 and delta[0, 1, 1, 1] < 0
