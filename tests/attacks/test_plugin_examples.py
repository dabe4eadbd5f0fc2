"""docs/plugins.md's worked examples, executed: each passes the shared battery, runs through
`transferlab run --plugin`, and the batch-coupled Admix fails `check-attack` with its reason."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from transferlab import cli
from transferlab.attacks.registry import COMPONENTS, _load_builtins
from transferlab.plugins import load_plugins
from transferlab.testing import run_battery

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
CASES = [  # (file, registered name, norms it is defined for)
    ("si_scale.py", "si_example", ("linf", "l2")),
    ("logit_objective.py", "normlogit_example", ("linf", "l2")),
    ("pi_step.py", "pi_example", ("linf",)),
    ("fia_objective.py", "fia_example", ("linf", "l2")),
    ("admix_batchmates.py", "admix_pool_example", ("linf", "l2")),
]


@pytest.fixture(autouse=True)
def clean_registry():
    """One thread for tiny models; the examples' names and modules removed afterwards."""
    _load_builtins()
    before, threads = dict(COMPONENTS), torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for key in set(COMPONENTS) - set(before):
        del COMPONENTS[key]
    for f in EXAMPLES.glob("*.py"):
        sys.modules.pop(f.stem, None)


@pytest.mark.parametrize("file,name,norms", CASES, ids=[c[1] for c in CASES])
def test_example_passes_the_battery(file, name, norms):
    load_plugins([str(EXAMPLES / file)])
    for norm in norms:
        for method in (name, f"mi+{name}"):
            failed = [c for c in run_battery(method, norm) if not c.ok]
            assert not failed, f"{method}/{norm}: {failed}"


def test_batch_coupled_admix_fails_check_attack_with_its_reason(capsys):
    plugin = str(EXAMPLES / "admix_batchmates.py")
    assert cli.main(["check-attack", "admix_batchmates_example", "--plugin", plugin, "--norm", "linf"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  independent of batch-mates: image 2 differs alone" in out
    assert cli.main(["check-attack", "mi+admix_pool_example", "--plugin", plugin, "--norm", "linf"]) == 0


def test_attacks_lists_a_plugin_with_its_parameters(capsys):
    assert cli.main(["attacks", "--plugin", str(EXAMPLES / "pi_step.py")]) == 0
    out = capsys.readouterr().out
    assert "pi_example" in out and "[plug-in: pi_step]" in out and "beta=10.0" in out


def test_examples_run_through_transferlab_run(tmp_path, monkeypatch):
    from conftest import ChannelNet
    from test_experiment import write_config

    from transferlab.runner import Experiment

    cache = {}
    def tiny(self, n):
        return cache.setdefault(n, ChannelNet(seed=len(n)))

    monkeypatch.setattr(Experiment, "load_single", tiny)
    config = write_config(
        tmp_path,
        plugins=[str(EXAMPLES / "logit_objective.py")],  # a config's own plugins: key
        attacks={
            "si": {"method": "mi+si_example", "si_example": {"copies": 3}},
            "logit": {"method": "mi+normlogit_example"},
            "pi": {"method": "pi_step:PatchwiseStep"},  # by import path; parameters by class name
            "fia": {"method": "fia_example", "fia_example": {"layer": "conv2", "copies": 4}},
            "admix": {"method": "mi+admix_pool_example"},
        },
    )
    args = ["run", str(config), "--out", str(tmp_path / "run"), "--quiet", "data.limit=4",
            "attacks.pi.PatchwiseStep.beta=5"]
    for f in ("si_scale.py", "pi_step.py", "fia_objective.py", "admix_batchmates.py"):
        args += ["--plugin", str(EXAMPLES / f)]
    assert cli.main(args) == 0
    import json

    import pandas as pd

    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(results.attack) == {"si", "logit", "pi", "fia", "admix"}
    spec = json.loads((tmp_path / "run" / "adv" / "pi" / "tiny_a" / "job.json").read_text())["spec"]
    assert spec["params"] == {"pi_step:PatchwiseStep": {"beta": 5}}  # the override reached it
