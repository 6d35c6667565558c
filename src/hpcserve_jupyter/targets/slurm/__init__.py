"""The SLURM target: jobs on a cluster reached over SSH (or on this machine with `host: local`)."""
