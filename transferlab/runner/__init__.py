"""The runner: a config becomes attack jobs whose outputs fill a run directory (see `experiment`)."""

from transferlab.runner.experiment import Experiment
from transferlab.runner.resolve import (
    RunError,
    attack_from_spec,
    auto_max_forward,
    loop_units,
    resolve_device,
)

__all__ = ["Experiment", "RunError", "attack_from_spec", "auto_max_forward", "loop_units", "resolve_device"]
