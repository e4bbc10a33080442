"""Ray Data pipelines for VISOR (shards, validation, tiling, collation); depends on ``visor_model`` only."""
