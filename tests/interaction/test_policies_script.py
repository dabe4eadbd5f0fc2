"""scripts/interaction_policies.py: per-policy means, ranks and paired differences from the reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

SPEC = importlib.util.spec_from_file_location(
    "interaction_policies", Path(__file__).parents[2] / "scripts" / "interaction_policies.py")
policies = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(policies)


def test_means_ranks_and_paired_differences(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for other, shift in (("per-coalition", 2.0), ("fixed", -1.0)):
        for k in range(30):
            base = rng.normal()
            for attack, value in (("pgd", base), ("vr", base + shift), ("mi", base - 0.5)):
                rows.append({"image_id": f"i{k}", "attack": attack, "source": "s", "estimator": "average",
                             "score": "margin", "other": other, "value": value})
    pd.DataFrame(rows).to_csv(tmp_path / "interaction.csv", index=False)
    assert policies.main([str(tmp_path)]) == 0
    out = pd.read_csv(tmp_path / "interaction_policies.csv")
    vr = out[out.attack == "vr"].set_index("other")
    assert abs(vr.loc["per-coalition", "diff"] - 2) < 1e-9 and vr.loc["per-coalition", "diff_low"] > 0
    assert abs(vr.loc["fixed", "diff"] + 1) < 1e-9 and vr.loc["fixed", "diff_high"] < 0
    assert vr.loc["per-coalition", "rank"] == 3 and vr.loc["fixed", "rank"] == 1  # the ordering flips
