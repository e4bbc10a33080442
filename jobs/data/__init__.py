"""The data jobs, ``visor data synth|pack|inspect``: their schemas (``config``). The work is done by
:mod:`pipelines` (``synth``, ``pack``, ``inspect``); this package only configures it, like every other job.
May import the modules directly in ``jobs/``, ``pipelines`` and ``visor_model``.
"""
