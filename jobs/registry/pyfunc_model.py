"""The code MLflow logs as the VISOR pyfunc model (models-from-code, see ``log_visor_model``).

MLflow runs this file when the model is loaded — no pickled Python object is stored. The weights and the
processor are the logged artifact ``model/``, read in :meth:`VisorPyfunc.load_context`.
"""

from mlflow.models import set_model

from jobs.registry.model_format import VisorPyfunc

set_model(VisorPyfunc())
