"""The project's definitions, autoloaded by `dg` and `rp_pipeline.definitions` (`load_from_defs_folder`)."""
