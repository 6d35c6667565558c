"""targets.yaml settings of a `kind: tapis-jobs` target (HPC systems through Tapis Jobs).

    targets:
      frontera:
        kind: tapis-jobs
        base_url: https://tacc.tapis.io
        username: jdoe
        password_env: TAPIS_PASSWORD      # the NAME of the variable, never the password
        system_id: frontera               # the Tapis execution system
        queue: rtx                        # its logical queue
        allocation: ABC23456              # the project charged (sbatch --account)
        storage_dir: /work2/01234/jdoe/hpcserve   # where the app bundle and secrets go
        ssh: {host: frontera.tacc.utexas.edu, key: ~/.ssh/id_ed25519}

Every id, queue, allocation and scheduler option is checked here, when the file is read, so
a bad value fails before any call to Tapis or the cluster. The authentication fields (and
the refusal of secret-looking keys) are the Pods target's (`TapisAuthConfig`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..tapis.config import TapisAuthConfig

# Tapis ids (systems, apps): a letter or digit first, then letters, digits and - . _ ~
TAPIS_ID = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,79}$"
# SLURM accounts and partitions as sites name them (TG-ABC123456, A-ccsc, gpu-a100).
SCHEDULER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
# One scheduler option: `--name` or `--name=value` / `--name value` of plain characters,
# since Tapis pastes it into a #SBATCH line of its own script.
OPTION_RE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(?:[= ][A-Za-z0-9_.,:@%+=/\[\]-]+)?")
DEFAULT_APP_ID = "hpcserve-serve"
# Options Tapis sets itself from the job's fields and refuses in schedulerOptions.
SUBSUMED = {"-N": "nodes", "--nodes": "nodes", "-n": "cores_per_node", "--ntasks":
            "cores_per_node", "-p": "queue", "--partition": "queue", "-t": "max_minutes",
            "--time": "max_minutes", "--mem": "memory_mb", "-A": "allocation",
            "--account": "allocation"}
# Values Tapis writes into tapisjob.env: quoted only when they hold a space or & > < | ;, so
# `$`, backquotes, backslashes and quotes would be read by bash. Paths here must be plain.
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./+:@%=,-]+")


class SshAccess(BaseModel):
    """How the node's port is reached with `tunnel: ssh`: through the system's login host
    (default: the host and port the Tapis system records), with the SSH layer of the SLURM
    target (host keys verified, ~/.ssh/config honoured)."""

    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, description="login host; default: the Tapis system's host")
    port: int | None = Field(None, ge=1, le=65535)
    user: str | None = Field(None, description="default: the system's effective user, else "
                             "the Tapis username")
    key: str | None = None
    key_passphrase_env: str | None = None
    key_passphrase_file: str | None = None
    jump: str | None = None
    known_hosts: str | None = None
    trust_on_first_use: bool = False
    ssh_config: str | None = "~/.ssh/config"
    use_agent: bool = True


def job_may_set(name: str) -> bool:
    """A shell variable name that is not one of Tapis's own (`_tapis...`)."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)) and not name.startswith("_tapis")


class TapisJobsConfig(TapisAuthConfig):
    # --- where it runs
    system_id: str = Field(pattern=TAPIS_ID, description="the Tapis execution system")
    queue: str | None = Field(None, pattern=TAPIS_ID,
                              description="logical queue; default: the system's default")
    allocation: str | None = Field(None, pattern=SCHEDULER_NAME,
                                   description="project charged (the scheduler's --account)")
    archive_system_id: str | None = Field(None, pattern=TAPIS_ID)
    storage_dir: str | None = Field(
        None, description="absolute directory on the system for the app bundle, secret files "
        "and job inputs; default: <the system's jobWorkingDir>/hpcserve when that is a plain "
        "path")

    # --- what runs
    app_id: str = Field(DEFAULT_APP_ID, pattern=TAPIS_ID)
    app_version: str | None = Field(None, pattern=TAPIS_ID,
                                    description="default: this package's version")
    runtime: Literal["ZIP", "SINGULARITY"] = Field(
        "ZIP", description="ZIP: the engine runs on the node as it is; SINGULARITY: inside "
        "`image` (the app's script runs it with `singularity exec`)")
    image: str | None = Field(None, description="with runtime SINGULARITY: a .sif path or "
                              "docker:// / oras:// URI; default: the recipe's image")
    container_command: Literal["singularity", "apptainer"] = "singularity"
    container_binds: list[str] = Field(default_factory=list,
                                       description="src[:dest[:opts]] paths bound in")
    python: str = Field("python3", description="interpreter for Python engines on the nodes")
    env: dict[str, str] = Field(default_factory=dict)
    bind_host: str = "0.0.0.0"
    hf_token_env: str | None = Field(
        None, description="environment variable whose value reaches the job as HF_TOKEN "
        "(through the secrets file)")

    # --- resources (default: the recipe's)
    max_minutes: int | None = Field(None, ge=1, description="default: the recipe's time limit")
    nodes: int | None = Field(None, ge=1)
    cores_per_node: int | None = Field(None, ge=1)
    memory_mb: int | None = Field(None, ge=1)
    scheduler_options: list[str] = Field(default_factory=list)

    # --- reaching the engine
    tunnel: Literal["ssh", "direct"] = Field(
        "ssh", description="ssh: through the login host; direct: Jupyter runs on the system")
    ssh: SshAccess = Field(default_factory=SshAccess)

    # --- lifecycle
    job_prefix: str = Field("hpcserve", pattern=r"^[a-z][a-z0-9-]{0,15}$")
    stop_timeout: float = Field(60.0, gt=0, description="seconds to wait for CANCELLED")

    @field_validator("scheduler_options")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for option in v:
            if not isinstance(option, str) or not OPTION_RE.fullmatch(option):
                raise ValueError(f"scheduler option {option!r} must be one option like "
                                 "--constraint=a100 or --qos normal (letters, digits and "
                                 "_ . , : @ % + = / [ ] - in its value)")
            name = re.split("[= ]", option)[0]
            if name in SUBSUMED:
                raise ValueError(f"scheduler option {name} is set from the job (Tapis refuses "
                                 f"it here): use `{SUBSUMED[name]}:` instead")
        return v

    @field_validator("python", "bind_host")
    @classmethod
    def _plain(cls, v: str) -> str:
        if not PLAIN_VALUE.fullmatch(v):
            raise ValueError(f"{v!r} must be a plain path or name (letters, digits and "
                             "_ . / + : @ % = , -): Tapis writes it into a shell file unquoted")
        return v

    @field_validator("container_binds")
    @classmethod
    def _binds(cls, v: list[str]) -> list[str]:
        for bind in v:
            if not re.fullmatch(r"/[A-Za-z0-9_./+@-]*(:/[A-Za-z0-9_./+@-]*(:(ro|rw))?)?", bind):
                raise ValueError(f"container bind {bind!r} must be /src[:/dest[:ro|rw]] of "
                                 "plain characters (letters, digits, _ . / + @ -)")
        return v

    @field_validator("storage_dir")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or ".." in v.split("/")
                              or not re.fullmatch(r"[A-Za-z0-9_./+-]+", v)):
            raise ValueError(f"storage_dir must be an absolute path of plain characters "
                             f"(letters, digits, _ . / + -), not {v!r}")
        return v.rstrip("/") if v not in (None, "/") else v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not job_may_set(key):
                raise ValueError(f"env: {key!r} is not a variable a job may set (letters, "
                                 "digits and _, not starting with a digit or _tapis)")
        return v
