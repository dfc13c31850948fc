"""Tandem: LLM serving with disaggregated prefill and decode. ``tandem.cli`` is the entry point."""
