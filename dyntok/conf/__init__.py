"""dyntok's Hydra configs (``config.yaml`` and its groups). Importing this package, as Hydra's compose API
does (``initialize_config_module("dyntok.conf")``), registers the typed schemas the YAML files extend."""

from dyntok.methods.schemas import register_schemas

register_schemas()
