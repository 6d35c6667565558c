"""targets.yaml settings of a `kind: tapis-pods` target.

    targets:
      tacc-pods:
        kind: tapis-pods
        base_url: https://tacc.tapis.io
        username: jdoe                 # or TAPIS_USERNAME in the environment
        password_env: TAPIS_PASSWORD   # the NAME of the variable; never the password itself
        hf_token_env: HF_TOKEN         # optional: forwarded into the pod for gated models

Secrets never live here: `password_env` / `token_env` / `hf_token_env` name environment
variables; a keyring entry or an interactive prompt are the other sources (see `auth.py`).
A config that carries a secret-looking key (`password`, `token`...) is refused.

`volume_mounts_shape` defaults to `live` (keyed by mount path, as the live Pods service and
FlexServ use it); `spec` is the shape of tapipy's bundled openapi (keyed by volume name). See
deploy.py for both.
"""

from __future__ import annotations

import string
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FLEXSERV_IMAGE = "tapis/flexserv:1.0"
SECRET_KEYS = ("password", "token", "access_token", "refresh_token", "jwt", "client_key",
               "hf_token", "api_key", "secret")
TEMPLATE_FIELDS = ("url", "pod_id", "key", "tenant_host")


class PodResources(BaseModel):
    """Explicit pod resources; unset values derive from the recipe (cpus, memory, gpus)."""

    model_config = ConfigDict(extra="forbid")
    cpu_request: int | None = Field(None, ge=1, description="millicores")
    cpu_limit: int | None = Field(None, ge=1, description="millicores")
    mem_request: int | None = Field(None, ge=1, description="MB")
    mem_limit: int | None = Field(None, ge=1, description="MB")
    gpus: int | None = Field(None, ge=0)


class TapisAuthConfig(BaseModel):
    """Where a Tapis tenant is and who we are there: shared by every Tapis target (Pods, Jobs).
    Secrets never live here, only the NAMES of the variables that hold them."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="tenant base URL, e.g. https://tacc.tapis.io")
    tenant_id: str | None = Field(
        None, description="default: the first label of base_url's host (tacc.tapis.io -> tacc); "
        "always sent, so tapipy never looks tenants up")
    username: str | None = None
    username_env: str = "TAPIS_USERNAME"
    password_env: str = "TAPIS_PASSWORD"
    token_env: str = Field("TAPIS_TOKEN", description="an access token given directly")
    keyring_service: str | None = Field(
        "hpcserve-tapis", description="keyring entry <service>/<username>@<tenant_id>, used "
        "when the optional `keyring` package is installed; null: never")
    prompt: bool = Field(True, description="ask for the password (getpass) when stdin is a TTY")
    verify_tls: bool = True
    request_timeout: float = Field(30.0, gt=0, le=600,
                                   description="seconds for any one Tapis API call")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = [k for k in data if str(k).lower() in SECRET_KEYS]
            if bad:
                # The value is never echoed: it is a secret that should not be in the file.
                raise ValueError(
                    f"{bad[0]!r} does not belong in the targets file: secrets come from the "
                    "environment (password_env, token_env, hf_token_env), a keyring or a prompt")
        return data

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must look like https://tenant.tapis.io, not {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _derive_tenant(self) -> TapisAuthConfig:
        host = urlsplit(self.base_url).hostname or ""
        if self.tenant_id is None:
            label = host.split(".")[0]
            if not label or label.isdigit() or "." not in host:
                raise ValueError(f"set tenant_id: it cannot be derived from {self.base_url!r}")
            self.tenant_id = label
        return self


class TapisPodsConfig(TapisAuthConfig):
    # --- where (the auth fields come from TapisAuthConfig)
    tenant_host: str | None = Field(None, description="host pods are published under "
                                    "(<pod>.pods.<tenant_host>); default: base_url's host")

    # --- what runs
    image: str | None = Field(None, description="overrides the recipe's/engine's image "
                              f"(default: that one, else {FLEXSERV_IMAGE})")
    python: str = Field("python3", description="interpreter for Python engines in the image")
    port: int = Field(8000, ge=10, le=65535, description="port the engine listens on in the pod")
    env: dict[str, str] = Field(default_factory=dict)
    hf_token_env: str | None = Field(
        None, description="environment variable whose value is passed to the pod as HF_TOKEN")
    compute_queue: str | None = None
    time_to_stop: int | None = Field(
        None, description="seconds; default: the session's max lifetime (recipe time limit); "
        "-1: unlimited")
    resources: PodResources = Field(default_factory=PodResources)
    max_gpus: int | None = Field(None, ge=0, description="refuse launches asking for more")

    # --- networking
    networking_key: str = Field("default", pattern=r"^[a-z0-9]{3,64}$")
    networking: dict[str, Any] = Field(
        default_factory=dict, description="extra networking options (ip_allow_list, cors_...)")
    endpoint_template: str = Field(
        "https://{url}", description="client URL of a pod; fields: {url} (the API's networking "
        "url, no scheme), {pod_id}, {key}, {tenant_host}")

    # --- model volume
    model_dir: str = Field("/app/models", pattern=r"^/.*")
    volume_size_mb: int = Field(20480, gt=0)
    volume_id: str | None = Field(
        None, description="a shared volume (created if missing, never deleted by hpcserve); "
        "default: one volume per session, deleted with it")
    keep_volume: bool = Field(False, description="keep a session's own volume when it ends")
    offline: bool = Field(False, description="the pods have no internet: launch hub models "
                          "only from the shared volume (hpcserve pull --on this target)")
    volume_mounts_shape: Literal["live", "spec"] = "live"

    # --- lifecycle
    id_prefix: str = Field("hps", pattern=r"^[a-z][a-z0-9]{0,15}$")
    stop_timeout: float = Field(30.0, gt=0, description="seconds to wait for a stopped pod")
    delete_ended: bool = Field(
        True, description="delete pods (and own volumes) that ended by themselves, once their "
        "logs are read")

    @field_validator("endpoint_template")
    @classmethod
    def _template(cls, v: str) -> str:
        names = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
        if unknown:
            raise ValueError(f"unknown field {{{unknown[0]}}} in endpoint_template; use "
                             + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS))
        return v

    @field_validator("networking")
    @classmethod
    def _networking(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("port", "protocol", "url"):
            if key in v:
                raise ValueError(f"networking.{key} is set by hpcserve (use `port:` for the port)")
        return v

    @field_validator("time_to_stop")
    @classmethod
    def _ttl(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and v < 300:
            raise ValueError("time_to_stop is -1 (unlimited) or at least 300 seconds (the "
                             "service's minimum)")
        return v

    @model_validator(mode="after")
    def _derive(self) -> TapisPodsConfig:
        if self.tenant_host is None:
            self.tenant_host = urlsplit(self.base_url).hostname or ""
        return self
