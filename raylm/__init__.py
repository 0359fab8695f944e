"""raylm: LLM pretraining on Ray, from raw text to a trained, tuned, evaluated model, one YAML recipe per run.

    raylm.core       what every stage shares: schema, paths, I/O, the manifest and shard format, progress, plots
    raylm.pipelines  the data stage (Ray Data)      raylm.training  training (Ray Train)
    raylm.tuning     search campaigns (Ray Tune)    raylm.cluster   the CLI, recipes, cluster files

The five folders sit at the top of the repository; an installed raylm maps them below this package
(pyproject's package-dir). In a source checkout that is not installed (a Ray Jobs working_dir, a worktree on
PYTHONPATH), they are found beside this folder.
"""

import os as _os

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_ROOT, "pyproject.toml")) and _os.path.isdir(_os.path.join(_ROOT, "cluster")):
    __path__.append(_ROOT)  # noqa: F821 (a package's __path__)
