"""The registry of model families (one module per family) and the published checkpoints.

    from protrans_cli.models import FAMILIES, get_family, load_model
"""
# The models helper fills this module: FAMILIES (explicit imports, no import-time side effects),
# get_family(name), family_for_config(config), CHECKPOINTS, resolve_model(name_or_path),
# load_model(name_or_path, ...).
