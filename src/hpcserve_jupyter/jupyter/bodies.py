"""The JSON bodies the REST API accepts, as pydantic models: validated by the handlers and
described by the OpenAPI document (both import them from here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from ..recipes import untextual
from ..sessions import NAME_PATTERN


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
