"""Running the jobs on Ray clusters: ``ray_env`` (how every job connects to Ray — a cluster from
``RAY_ADDRESS`` or a local instance), ``submit`` (``visor submit`` and ``visor jobs`` over the Ray Jobs
API) and ``infra`` (``visor infra render``: KubeRay, MLflow server and CronJob manifests from one values
file). They import Ray, pydantic and YAML only, nothing from the other job packages.
"""
