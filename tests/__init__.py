"""The test suite. A package (as is each folder under it), so pytest imports every test module by
its full name (``tests.models.test_cmpl``) with the repository root on the import path: test files
may share a basename across folders, and tests import their helpers as ``tests.helpers``."""
