"""The local demos: ``pipeline_demo`` (``visor demo`` / ``make demo``: synthetic shards → retrain →
one served request → the champion's evaluation table) and ``model_demo`` (``visor model-demo``: one
question through a random tiny model at every budget, with its costs). ``pipeline_demo`` drives the whole
pipeline and may import every other package; ``model_demo`` imports ``visor_model`` only.
"""
