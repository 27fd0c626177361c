"""LightningModules: they wire ``dlgpr.models`` to ``dlgpr.losses`` and the optimiser."""
