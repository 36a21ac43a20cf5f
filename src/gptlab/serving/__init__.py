"""Serving a trained GPT: an OpenAI-compatible HTTP API over a dynamic-batching engine, and the
playground page (`python serve.py ckpt_path=...`)."""
