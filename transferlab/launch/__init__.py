"""Launchers that spread one run over cluster nodes (SLURM through submitit)."""
