"""gonka_mux: one OpenAI-shaped client over many LLM endpoints."""

__version__ = "0.1.0"
