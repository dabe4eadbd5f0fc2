"""The runner's public names under their old module (`from transferlab.experiment import Experiment`)."""

from transferlab.rundir.jobs import KEY_FORMAT, Job
from transferlab.runner import (
    Experiment,
    RunError,
    attack_from_spec,
    auto_max_forward,
    loop_units,
    resolve_device,
)

__all__ = [
    "KEY_FORMAT", "Experiment", "Job", "RunError", "attack_from_spec", "auto_max_forward", "loop_units",
    "resolve_device",
]
