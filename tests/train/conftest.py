"""Training tests: the packed chat dataset (`chat_packed`) comes from tests/conftest.py, tokenised once
per session with the tiny model's tokenizer.

Sizes stay small on purpose: the tiny model's 49,152-token vocabulary dominates every step's cost.
"""
