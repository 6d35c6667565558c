"""The Tapis Pods target: one session = one pod (plus a volume for model files) on Tapis Pods.

Modules, one job each:

| module | job |
|---|---|
| `config.py` | `TapisPodsConfig`, the targets.yaml settings (no secrets in it, ever) |
| `auth.py` | credentials from env / keyring / prompt, the tapipy client, timeouts, token refresh |
| `errors.py` | tapipy exceptions -> hpcserve errors, with the service's (joined) message |
| `client.py` | `PodsApi`: one call = one tapipy operation, the 401 retry, plain-dict results |
| `ids.py` | deployment, pod and volume ids, checked like the service checks them |
| `deploy.py` | ServeSpec + LaunchRequest -> create_volume / create_pod bodies (pure) |
| `states.py` | pod status -> `TargetStatus` phase (pure) |
| `target.py` | `TapisPodsTarget`: launch, batched poll, stop, logs, endpoints |

tapipy is imported lazily, so building the target (and validating its config) costs nothing.
"""
