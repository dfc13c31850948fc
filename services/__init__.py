"""Tandem's worker processes and the runtime they share.

- ``services.engine``: the model runtime (Llama model, paged KV cache, scheduler, sampler).
- ``services.prefill`` / ``services.decode``: the two worker processes built on it.
"""
