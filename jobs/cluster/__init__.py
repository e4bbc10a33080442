"""Running the jobs on Ray clusters: ``ray_env`` (how every job connects to Ray — a cluster from
``RAY_ADDRESS``, the live cluster the last ``ray start`` recorded, or a local instance), ``submit``
(``visor submit`` and ``visor jobs`` over the Ray Jobs API), ``localize`` (a submitted config's paths keep
the meaning they have where the command was typed) and ``infra`` (``visor infra render``: the values schema,
and the KubeRay, MLflow server and CronJob manifests rendered from it). ``ray_env`` imports only Ray;
``submit`` imports Ray and ``localize``, which imports the job config schemas (``jobs.config``,
``jobs.train.config``, ``jobs.registry.config``); ``infra`` imports the config schemas of what it renders
(``jobs.config``, ``jobs.sections``, ``jobs.serving.config``); none of them imports what runs a job.
"""
