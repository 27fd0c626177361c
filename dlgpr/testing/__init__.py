"""Offline doubles for tests and benchmarks (like ``torch.testing``): tiny random Hugging Face models
with locally built tokenizers (:mod:`dlgpr.testing.tiny_models`) and a rule-based OpenAI-compatible
chat server with fault injection (:mod:`dlgpr.testing.openai_server`).

Nothing here is imported by ``import dlgpr``; import the module you need.
"""
