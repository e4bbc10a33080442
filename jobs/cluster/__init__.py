"""Running the jobs on Ray clusters: ``submit``
(``visor submit`` and ``visor jobs`` over the Ray Jobs API), ``localize`` (a submitted config's paths keep
the meaning they have where the command was typed), ``infra`` (``visor infra render``: the values schema,
and the KubeRay, MLflow server and CronJob manifests rendered from it), and the checks of ``visor infra check``:
``crds`` (KubeRay's CRD schemas, derived and committed in ``crds/``), ``kube_schema`` (an object against them,
strictly, with Kubernetes' structural-schema semantics) and ``job_check`` (every job the manifests declare can
start: command, config, mounted paths, CPUs). A layer above the jobs (``docs/DESIGN.md §2``):
``submit`` imports Ray and ``localize``, which imports the job config schemas (``jobs.config``,
``jobs.train.config``, ``jobs.retrain.config``); ``infra`` imports the config schemas of what it renders
(``jobs.config``, ``jobs.sections``, ``jobs.serving.config``); ``kube_schema`` imports ``crds`` and jsonschema;
``job_check`` imports ``localize``, ``infra`` (CPU quantities), the job config schemas, Ray Serve's config
schema, and parses commands with the ``visor`` command line it is given (it never imports the CLI); none of them
imports what runs a job.
"""
