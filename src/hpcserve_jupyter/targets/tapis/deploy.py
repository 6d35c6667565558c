"""ServeSpec + LaunchRequest -> the create_volume and create_pod bodies of one deployment.

Pure: no API call happens here, so every invalid id or resource fails before anything is created.

The pod runs the spec's argv as `command` (argv[0]) + `arguments` (the rest), placeholders filled:
{HPCSERVE_PORT} -> `port` (8000), {HPCSERVE_HOST} -> 0.0.0.0, {HPCSERVE_PYTHON} -> `python`
(python3), and {HPCSERVE_API_KEY} -> `$(HPCSERVE_API_KEY)`: a Kubernetes variable reference
that the kubelet expands from the container's environment (the Pods service hands command and
arguments to Kubernetes unchanged), so the key is never inline in the command. Any other `$(`
in argv is escaped as `$$(` so Kubernetes leaves it alone.

Secrets: the pod's `environment_variables` is the ONE place a secret goes — the per-session API
key under the engine's variable (spec.secret_env, e.g. API_KEY) and, if the argv
uses the placeholder, HPCSERVE_API_KEY; the Hugging Face token (HF_TOKEN and
HUGGING_FACE_HUB_TOKEN) when `hf_token_env` names a set variable. The engine cannot get them any
other way; be aware that anyone who may read the pod through the Pods API sees its environment.
hpcserve never stores or logs these bodies.

Volume: one per deployment (`<deployment>vol`, `volume_size_mb` MB) mounted at `model_dir`
(/app/models), unless `volume_id` names a shared one. Hub models download into it
(HF_HOME=<model_dir>/hf); HPCSERVE_MODEL_DIR is FlexServ's layout, <model_dir>/<model id with
'/' replaced by '_'>.

`volume_mounts` has two shapes (config `volume_mounts_shape`):
* `live` (DEFAULT): keyed by mount path,
  `{"/app/models": {"type": "tapisvolume", "source_id": VOL, "sub_path": ""}}` — what the
  live Pods service validates today (models_volume_mounts_utils: "Keys are mount_path
  strings") and what FlexServ sends. tapipy's bundled spec types volume_mounts as a free-form
  object, so it passes this through untouched.
* `spec`: keyed by volume name, `{VOL: {"type": "tapisvolume", "mount_path": "/app/models",
  "sub_path": ""}}` — the shape of tapipy 25.4.0's bundled openapi (models_pods__VolumeMount),
  for deployments that still run a service of that vintage.

One-off jobs (the launch stages files): the job's files go to `job/` in the deployment's own
volume, so {HPCSERVE_JOBDIR} is `<model_dir>/job`. With a shared `volume_id` (whose files are
not the job's to delete), the job gets its own volume beside it, mounted at /hpcserve-job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadInput
from ...spec import API_KEY, HOST, JOBDIR, PORT, PYTHON, ServeSpec, render
from ..base import LaunchRequest
from .config import FLEXSERV_IMAGE, TapisPodsConfig
from .ids import VOLUME_SUFFIX, DeploymentIds, check_id, deployment_ids

BIND_HOST = "0.0.0.0"
API_KEY_VAR = "HPCSERVE_API_KEY"
API_KEY_REF = f"$({API_KEY_VAR})"
MIN_TIME_TO_STOP = 300  # the service refuses less (except -1, unlimited)
# FlexServ's defaults, used when the recipe gives no size (request = half the limit, as there).
DEFAULT_CPU_LIMIT, DEFAULT_MEM_LIMIT = 2000, 8192
JOB_SUBDIR = "job"  # a job's directory inside the volume that holds its files
JOB_MOUNT = "/hpcserve-job"  # where a job's own volume is mounted beside a shared one


@dataclass(frozen=True)
class Plan:
    """Everything launch sends; `pod` and `secrets` hold secret values and never print."""

    ids: DeploymentIds
    volume_owned: bool  # created for this deployment (and deleted with it)
    volume: dict[str, Any]
    pod: dict[str, Any] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False, default=())
    url: str = ""  # the networking url the service will give the pod (no scheme)
    # One-off jobs: the volume holding the job's files (under JOB_SUBDIR), the job's directory
    # in the pod, and the body of that volume when it is not `volume` (a shared one is used).
    job_volume: str = ""
    job_dir: str = ""
    job_volume_body: dict[str, Any] | None = None


def model_dir_name(model: str | None) -> str | None:
    """FlexServ's directory name for a hub model id: `org/name` -> `org_name`."""
    if not model or model.startswith(("/", ".", "~")):
        return None
    return model.replace("/", "_")


def pod_url(pod_id: str, key: str, tenant_host: str) -> str:
    """`<pod_id>.pods.<tenant host>`, `<pod_id>-<key>.pods...` for a non-default key."""
    prefix = pod_id if key == "default" else f"{pod_id}-{key}"
    return f"{prefix}.pods.{tenant_host}"


def command(spec: ServeSpec, s: TapisPodsConfig, job_dir: str = "") -> list[str]:
    values = {PORT: str(s.port), HOST: BIND_HOST, PYTHON: s.python, API_KEY: API_KEY_REF}
    if job_dir:
        values[JOBDIR] = job_dir
    return [render(arg.replace("$(", "$$("), values) for arg in spec.argv]


def uses_key_placeholder(spec: ServeSpec) -> bool:
    return any(API_KEY in arg for arg in spec.argv)


def environment(req: LaunchRequest, s: TapisPodsConfig,
                job_dir: str = "") -> tuple[dict[str, str], list[str]]:
    """The pod's environment and the secret values in it."""
    spec = req.spec
    # Placeholders in values (an engine configured by `PORT_VAR={HPCSERVE_PORT}`) are filled
    # in as on the other targets; the API key only below, as a secret.
    fill = {PORT: str(s.port), HOST: BIND_HOST, PYTHON: s.python}
    if job_dir:
        fill[JOBDIR] = job_dir
    env: dict[str, str] = {k: render(str(v), fill) for k, v in {**s.env,
                                                                **spec.env_dict()}.items()}
    key_in_env = sorted(k for k, v in env.items() if API_KEY in v)
    secrets: list[str] = []
    if spec.model:
        env["HPCSERVE_MODEL"] = spec.model
        name = model_dir_name(spec.model)
        if name:
            env["HPCSERVE_MODEL_DIR"] = f"{s.model_dir.rstrip('/')}/{name}"
            env.setdefault("HF_HOME", f"{s.model_dir.rstrip('/')}/hf")
    if s.hf_token_env:
        token = os.environ.get(s.hf_token_env)
        if not token:
            raise BadInput(f"hf_token_env names ${s.hf_token_env}, which is not set",
                           hint=f"export {s.hf_token_env}=<token>, or remove hf_token_env")
        env["HF_TOKEN"] = env["HUGGING_FACE_HUB_TOKEN"] = token
        secrets.append(token)
    secret_env = req.secret_env()
    env.update(secret_env)
    secrets += [v for v in secret_env.values() if v]
    if uses_key_placeholder(spec) or key_in_env:
        key = req.secrets.get("api_key")
        if not key:
            raise BadInput("the engine takes an API key on its command line or in its "
                           "environment, but the launch has no per-session key")
        if uses_key_placeholder(spec):
            env[API_KEY_VAR] = key
        for name in key_in_env:
            env[name] = render(env[name], {API_KEY: key})
        secrets.append(key)
    return {k: str(v) for k, v in env.items()}, secrets


def resources(spec: ServeSpec, s: TapisPodsConfig) -> dict[str, int]:
    """cpu in millicores, memory in MB: limits from the recipe, requests half of them."""
    if spec.nodes > 1:
        raise BadInput(f"a pod runs on one node; this launch asks for {spec.nodes}",
                       hint="launch with nodes=1, or on a cluster target")
    if spec.replicas > 1:
        raise BadInput(f"a pod serves one replica; this launch asks for {spec.replicas}",
                       hint="launch with replicas=1 (launch several sessions for more)")
    r = s.resources
    cpu_limit = r.cpu_limit or (spec.cpus * 1000 if spec.cpus else DEFAULT_CPU_LIMIT)
    mem_limit = r.mem_limit or spec.memory_mb or DEFAULT_MEM_LIMIT
    cpu_request = r.cpu_request or max(1, cpu_limit // 2)
    mem_request = r.mem_request or max(1, mem_limit // 2)
    gpus = r.gpus if r.gpus is not None else spec.gpus
    if cpu_request > cpu_limit:
        raise BadInput(f"cpu_request {cpu_request}m is above cpu_limit {cpu_limit}m",
                       hint="lower resources.cpu_request in targets.yaml, or raise the limit "
                       "(cpus=N sets it to N*1000m)")
    if mem_request > mem_limit:
        raise BadInput(f"mem_request {mem_request} MB is above mem_limit {mem_limit} MB",
                       hint="lower resources.mem_request in targets.yaml, or raise the limit "
                       "(memory=NG sets it)")
    if s.max_gpus is not None and gpus > s.max_gpus:
        raise BadInput(f"this launch asks for {gpus} GPUs; the target allows {s.max_gpus}",
                       hint="launch with gpus=N within the limit")
    return {"cpu_request": cpu_request, "cpu_limit": cpu_limit, "mem_request": mem_request,
            "mem_limit": mem_limit, "gpus": gpus}


def time_to_stop(spec: ServeSpec, s: TapisPodsConfig) -> int:
    """Seconds the pod may run (the service stops it then): config, else the session's max
    lifetime, else the recipe's time limit; -1 unlimited; at least the service's 300."""
    if s.time_to_stop is not None:
        return s.time_to_stop
    seconds = spec.max_lifetime_s or spec.time_s
    if not seconds:
        return -1
    return max(MIN_TIME_TO_STOP, int(seconds))


def volume_mounts(s: TapisPodsConfig, volume_id: str,
                  job_volume: str | None = None) -> dict[str, Any]:
    """The model volume at `model_dir`, and a job's own volume at JOB_MOUNT when given."""
    mounts = [(volume_id, s.model_dir)] + ([(job_volume, JOB_MOUNT)] if job_volume else [])
    if s.volume_mounts_shape == "spec":
        return {vol: {"type": "tapisvolume", "mount_path": path, "sub_path": ""}
                for vol, path in mounts}
    return {path: {"type": "tapisvolume", "source_id": vol, "sub_path": ""}
            for vol, path in mounts}


def job_layout(req: LaunchRequest, s: TapisPodsConfig,
               ids: DeploymentIds) -> tuple[str, str, dict[str, Any] | None]:
    """(volume of the job's files, the job's directory in the pod, the body of that volume if
    it must be created beside a shared one); empty for sessions."""
    if not req.files:
        return "", "", None
    if s.volume_id is None:
        return ids.volume, f"{s.model_dir.rstrip('/')}/{JOB_SUBDIR}", None
    own = check_id(ids.deployment + VOLUME_SUFFIX, "volume id")
    if own == s.volume_id:
        raise BadInput(f"the shared volume_id {own!r} is the name of this job's own volume",
                       hint="name the shared volume differently in targets.yaml")
    body = {"volume_id": own, "size_limit": s.volume_size_mb,
            "description": _ascii(f"hpcserve job files of {ids.deployment}")}
    return own, f"{JOB_MOUNT}/{JOB_SUBDIR}", body


def _ascii(text: str, limit: int = 255) -> str:
    return text.encode("ascii", "replace").decode()[:limit]


def plan(req: LaunchRequest, s: TapisPodsConfig) -> Plan:
    """The bodies of one launch, or a BadInput naming what to change. Makes no call."""
    spec = req.spec
    ids = deployment_ids(s.id_prefix, req.name, req.session_id, s.volume_id)
    res = resources(spec, s)
    job_volume, job_dir, job_volume_body = job_layout(req, s, ids)
    argv = command(spec, s, job_dir)
    if not argv:
        raise BadInput(f"recipe {spec.recipe!r} gives no command to run")
    env, secrets = environment(req, s, job_dir)
    stanza = {**s.networking, "protocol": "http", "port": s.port}
    pod: dict[str, Any] = {
        "pod_id": ids.pod,
        "image": s.image or spec.image or FLEXSERV_IMAGE,
        "description": _ascii(f"hpcserve {'job' if job_dir else 'session'} {req.name} "
                              f"({req.session_id}): {spec.recipe} on {spec.backend}"),
        "command": argv[:1],
        "arguments": argv[1:],
        "environment_variables": env,
        "volume_mounts": volume_mounts(s, ids.volume, job_volume if job_volume_body else None),
        "networking": {s.networking_key: stanza},
        "resources": res,
        "time_to_stop_default": time_to_stop(spec, s),
    }
    if s.compute_queue:
        pod["compute_queue"] = s.compute_queue
    volume = {"volume_id": ids.volume, "size_limit": s.volume_size_mb,
              "description": _ascii(f"hpcserve model files of {ids.deployment}"
                                    if s.volume_id is None else "hpcserve shared model files")}
    assert s.tenant_host is not None
    return Plan(ids=ids, volume_owned=s.volume_id is None, volume=volume, pod=pod,
                secrets=tuple(secrets), url=pod_url(ids.pod, s.networking_key, s.tenant_host),
                job_volume=job_volume, job_dir=job_dir, job_volume_body=job_volume_body)
