"""loraops: keeps fine-tuned LLM adapters fresh, safe and served."""

__version__ = "0.1.0"
