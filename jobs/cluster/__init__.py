"""Running the jobs on Ray clusters: ``ray_env`` (how every job connects to Ray — a cluster from
``RAY_ADDRESS`` or a local instance), ``submit`` (``visor submit`` and ``visor jobs`` over the Ray Jobs
API) and ``infra`` (``visor infra render``: the values schema, and the KubeRay, MLflow server and CronJob
manifests rendered from it). ``ray_env`` and ``submit`` import only Ray; ``infra`` imports the config
schemas of what it renders (``jobs.config``, ``jobs.sections``, ``jobs.serving.config``) and nothing
that runs a job.
"""
