"""Serving: the vLLM server, runtime LoRA adapters under stable names, and the alias sync hook."""
