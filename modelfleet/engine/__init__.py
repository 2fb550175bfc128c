"""Engine simulator: a vLLM-like engine model (pure, clock injected) plus its hosts.

`core` holds the engine model (continuous batching, chunked prefill, paged KV cache with
prefix caching, preemption), `timing` the per-accelerator step-time model, `profiles` the
accelerator and model specs, `kvcache` the block pool and vLLM's block-hash recipe, and
`virtual` a discrete-event driver that steps engines in virtual time. The HTTP server,
tokenizer, metrics and KV-event publisher build on `core`.
"""
