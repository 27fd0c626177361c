"""dlgpr: conversational visual place recognition (DlgPR, CVPR 2026) on PyTorch Lightning.

Layout (README.md, "Layout"; formulas: docs/METHOD.md): ``dlgpr.data`` (record schema, shards, SynthCities), ``dlgpr.models``
(plain nn.Modules), ``dlgpr.losses`` / ``dlgpr.metrics`` (pure tensor functions), ``dlgpr.search``
(top-k search, torch or faiss), ``dlgpr.modules`` (LightningModules); the top-level packages
``datamodules`` and ``callbacks`` hold the Lightning data modules and callbacks.
"""

from dlgpr._env import configure_offline_env

configure_offline_env()

__version__ = "0.1.0"
