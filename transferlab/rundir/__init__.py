"""The run directory: its layout, marker and identity, writer locks, shards and job identity.

Everything that reads or writes a run directory goes through this package; nothing in it runs a model.
"""

from transferlab.rundir.jobs import KEY_FORMAT, Job, data_identity, job_key, jobs_of, plan_digest
from transferlab.rundir.layout import RunDir
from transferlab.rundir.lock import SELECT, RunLock, RunLockedError
from transferlab.rundir.marker import (
    LOCKS,
    MARKER,
    RUN_FILES,
    RUN_FOLDERS,
    WHOLE_RUN,
    RunDirError,
    check_identity,
    check_model,
    check_output_dir,
    describe_fresh,
    fresh_plan,
    is_empty,
    is_run,
    make_dir,
    model_digest,
    read_marker,
    remove_entries,
)
from transferlab.rundir.shards import Shard, ShardError, launcher_shard, parse_shard

__all__ = [
    "KEY_FORMAT", "LOCKS", "MARKER", "RUN_FILES", "RUN_FOLDERS", "SELECT", "WHOLE_RUN", "Job", "RunDir",
    "RunDirError", "RunLock", "RunLockedError", "Shard", "ShardError", "check_identity", "check_model",
    "check_output_dir", "data_identity", "describe_fresh", "fresh_plan", "is_empty", "is_run", "job_key",
    "jobs_of", "launcher_shard", "make_dir", "model_digest", "parse_shard", "plan_digest", "read_marker",
    "remove_entries",
]
