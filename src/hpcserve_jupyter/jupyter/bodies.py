"""The JSON bodies the REST API accepts, as pydantic models: validated by the handlers and
described by the OpenAPI document (both import them from here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from ..gatewaykeys import LABEL_PATTERN
from ..recipes import untextual
from ..sessions import NAME_PATTERN

# A positive duration as durations.parse_duration reads it: 90, 90s, 30m, 2h, 1d, H:MM[:SS],
# D-HH[:MM[:SS]] (a leading digit that is not 0, so no zero duration passes the schema).
TIME_PATTERN = (r"^\s*(?:0*[1-9]\d{0,8}(?:\.\d+)?\s*(?:s|m|min|h|d)?"
                r"|0*[1-9]\d{0,3}-\d{1,2}(?::\d{1,2}){1,2}|0*[1-9]\d{0,5}(?::\d{1,2}){1,2})\s*$")
PATH_MAX = 4096  # Linux's PATH_MAX: a longer path is refused by every file call (ENAMETOOLONG)
NAME_MAX = 255  # bytes in one path component


def _scope_schema(schema: dict[str, Any]) -> None:
    """A key's scope: ["*"], or existing sessions' names or ids, or null (every session)."""
    schema.clear()
    schema.update({"description": "names or ids of existing sessions the key may use; null or "
                   "[\"*\"]: every session", "anyOf": [
                       {"type": "array", "minItems": 1, "maxItems": 1,
                        "items": {"type": "string", "enum": ["*"]}},
                       {"type": "array", "minItems": 1,
                        "items": {"type": "string", "pattern": NAME_PATTERN}},
                       {"type": "null"}]})


class SecretsBody(RootModel[dict[str, str]]):
    """The body of PUT /hpcserve/api/targets/{name}/secrets: environment name -> value."""

    @field_validator("root")
    @classmethod
    def _environment_safe(cls, v: dict[str, str]) -> dict[str, str]:
        # What os.environ cannot hold would raise there (a 500): NUL, lone surrogates.
        for key, value in v.items():
            if "\0" in key or "\0" in value:
                raise ValueError(f"the value of {key!r} contains a NUL character")
        bad = untextual(v)
        if bad is not None:
            raise ValueError(f"the value of {bad[0]!r} is not valid text (a lone surrogate)")
        return v


class LaunchBody(BaseModel):
    """The body of POST /hpcserve/api/sessions."""

    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(min_length=1, description="recipe name (GET /hpcserve/api/recipes)")
    backend: str | None = Field(None, description="serving engine; default: the recipe's first")
    target: str = Field("local", min_length=1, description="where it runs (GET targets)")
    # The name is checked by the manager's launch, as for every front end.
    name: str | None = Field(None, description="session name; default: RECIPE-N",
                             json_schema_extra={"pattern": NAME_PATTERN})
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="per-launch changes, as `--set KEY=VALUE`: "
                                      "gpus, time, replicas, env.NAME, engine_args.FLAG...")


class JobBody(BaseModel):
    """The body of POST /hpcserve/api/jobs: a batch job over an OpenAI Batch file."""

    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(min_length=1, description="an inference or embedding recipe")
    input: str = Field(min_length=1, max_length=PATH_MAX,
                       description="the OpenAI Batch file (JSONL), a path on the server's "
                       "machine; a relative path starts at the server's root directory")
    output: str | None = Field(None, min_length=1, max_length=PATH_MAX,
                               description="where the output JSONL is written on the server's "
                               "machine; default: the job's directory. An existing output's "
                               "answered custom_ids are skipped")
    target: str = Field("local", min_length=1, description="where it runs (GET targets)")
    backend: str | None = Field(None, description="serving engine; default: the recipe's first")
    # The name is checked by the job manager, as for every front end.
    name: str | None = Field(None, description="job name; default: RECIPE-job-N",
                             json_schema_extra={"pattern": NAME_PATTERN})
    # Strict: JSON true or 8.5 is not a concurrency. The upper limit is the server's setting.
    concurrency: int = Field(8, ge=1, strict=True,
                             description="requests in flight at once (at most the server's "
                             "limit, 256 by default)")
    resume: str | None = Field(None, min_length=1,
                               description="id or name of an ended job: its answered "
                               "custom_ids are skipped, its output carried over")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="per-job changes, as `--set KEY=VALUE`: "
                                      "gpus, time, env.NAME, engine_args.FLAG...")
    runner: Literal["auto", "generic", "engine"] = Field(
        "auto", description="who sends the requests: the generic runner, the engine's own "
        "batch runner (vllm run-batch), or auto (the engine's where it is faster and answers "
        "every line)")

    @field_validator("input", "output")
    @classmethod
    def _usable_path(cls, v: str | None) -> str | None:
        # What no file call can take would fail deep in the job manager (a 500): say so here.
        if v is None:
            return v
        if "\0" in v:
            raise ValueError("a path cannot contain a NUL character")
        if untextual(v) is not None:
            raise ValueError("the path is not valid text (a lone surrogate)")
        if len(v.encode()) >= PATH_MAX:
            raise ValueError(f"the path is longer than {PATH_MAX - 1} bytes")
        if any(len(part.encode()) > NAME_MAX for part in v.split("/")):
            raise ValueError(f"a path component is longer than {NAME_MAX} bytes")
        return v


class KeyBody(BaseModel):
    """The body of POST /hpcserve/api/keys: a gateway key (accepted by /hpcserve/v1 only)."""

    model_config = ConfigDict(extra="forbid")
    # Both fields are checked by the key store and the service, as for every front end; the
    # schema says exactly what they accept.
    label: str | None = Field(None, description="a name to recognise the key by (unique among "
                              "unrevoked keys); default: key-N",
                              json_schema_extra={"pattern": LABEL_PATTERN})
    sessions: list[str] | None = Field(None, json_schema_extra=_scope_schema)


class JupyterAiBody(BaseModel):
    """The body of POST /hpcserve/api/sessions/{id}/jupyter-ai (optional)."""

    model_config = ConfigDict(extra="forbid")
    default: bool = Field(False, strict=True,
                          description="also make the session Jupyter AI's default chat model")


class RelaunchBody(BaseModel):
    """The body of POST /hpcserve/api/sessions/{id}/relaunch (optional)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="the new session's name "
                             "(default: the old one with the next number)")


class ExtendBody(BaseModel):
    """The body of POST /hpcserve/api/sessions/{id}/extend."""

    model_config = ConfigDict(extra="forbid")
    # Checked by _positive (one clear message); the schema says the same for clients.
    time: str | int = Field(
        description="how much longer: '30m', '2h', '1:30:00' or seconds", examples=["30m"],
        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 1, "maximum": 10**9},
                                     {"type": "string", "pattern": TIME_PATTERN}]})

    @field_validator("time")
    @classmethod
    def _positive(cls, v: str | int) -> str | int:
        from ..durations import parse_duration

        try:
            parse_duration(v)
        except ValueError as exc:
            raise ValueError(f"invalid time: {exc}") from None
        return v
