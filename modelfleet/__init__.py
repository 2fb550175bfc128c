"""modelfleet: a Kubernetes operator and cluster scheduler for multi-model LLM serving."""

__version__ = "0.1.0"
