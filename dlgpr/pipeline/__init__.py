"""DQ-Cities construction: the dialogue corpus (and, later, the GSV-Cities stages)."""
