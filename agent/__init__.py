"""cost-agent: keeps an LLM serving fleet at the least cost that still meets its latency targets."""

__version__ = "0.1.0"
