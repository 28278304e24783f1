"""The code location, autoloaded from the `defs/` folder as `dg` projects are.

`[tool.dg]` in pyproject.toml names this module as the code location's target, so `dg dev`,
`dg check defs`, `dagster dev -w workspace.yaml` and `dagster job execute -m rp_pipeline` all
load the same definitions under the same location name, `rp_pipeline`.
"""

import sys
from pathlib import Path

import dagster as dg

from . import defs as defs_folder


def load_definitions() -> dg.Definitions:
    """The definitions in `defs/`, found through the project's pyproject.toml; an installed copy of the
    package (no pyproject.toml beside it) loads the same folder directly."""
    here = Path(__file__).parent
    config = here.parent / "pyproject.toml"
    if config.is_file() and "[tool.dg]" in config.read_text():
        return dg.load_from_defs_folder(path_within_project=here)
    return dg.components.ComponentTree.from_module(
        defs_module=defs_folder, project_root=here
    ).build_defs()


defs = load_definitions()

# Importing the `defs/` folder bound `rp_pipeline.defs` to that subpackage (Python sets a subpackage
# as an attribute of its parent); the package's `defs` is these Definitions, as `dagster -m rp_pipeline`
# and `from rp_pipeline import defs` expect.
sys.modules[__package__].defs = defs
