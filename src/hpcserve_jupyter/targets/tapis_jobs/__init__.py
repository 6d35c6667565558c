"""The Tapis Jobs target: sessions and one-off jobs as Tapis jobs on HPC systems (SLURM).

Modules, one job each:

| module | job |
|---|---|
| `config.py` | `TapisJobsConfig`, the targets.yaml settings (auth shared with Tapis Pods) |
| `api.py` | `JobsApi`: one call = one tapipy operation (Jobs, Apps, Systems, Files) |
| `app.py` | hpcserve's Tapis app: bundle, definition, registration |
| `tapisjob_app.sh` | the app's script: secrets, placeholders, endpoint.json, exit code |
| `request.py` | ServeSpec + LaunchRequest -> submitJob body, every word quoted (pure) |
| `states.py` | a Tapis job status -> `TargetStatus` phase (pure) |
| `target.py` | `TapisJobsTarget`: launch, batched poll, stop, logs, endpoints, job files |

tapipy is imported lazily, so building the target (and validating its config) costs nothing.
"""
