"""One interface for "answer this image(s) + conversation": HTTP (OpenAI-compatible), transformers, vLLM."""
