"""Builders and doubles only the tests use: tiny place shards, a lexical retriever, tiny CMPL modules.

Doubles that benchmark scripts share with the tests live in :mod:`dlgpr.testing`.
"""
