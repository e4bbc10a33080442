"""The data jobs, ``visor data synth|pack|inspect``: their schemas (``config``) and each job as a function of
its config returning a typed result (``run``). The work is done by :mod:`pipelines` (``synth``, ``pack``,
``inspect``); this package configures it and types what comes back, like every other job.
May import the modules directly in ``jobs/``, ``pipelines`` and ``visor_model``.
"""
