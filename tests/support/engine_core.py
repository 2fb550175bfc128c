"""A small `EngineCore` for the engine-core tests, and the pure toy model it runs."""

from __future__ import annotations

from collections.abc import Sequence

from modelfleet.engine.core import EngineConfig, EngineCore, KVEvent


def toy_next_token(context: Sequence[int]) -> int:
    """A pure 'model': next token from the last token and the length (never EOS=0 by itself)."""
    return (context[-1] * 31 + len(context) * 7) % 997 + 3


def make_engine(
    *,
    num_gpu_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 1024,
    enable_prefix_caching: bool = True,
    events: list[KVEvent] | None = None,
    eos_token_id: int | None = None,
    accelerator: str = "h100-80gb",
    model: str = "tiny",
) -> EngineCore:
    cfg = EngineConfig(
        accelerator=accelerator,
        model=model,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_prefix_caching=enable_prefix_caching,
    )
    return EngineCore(
        cfg,
        next_token=toy_next_token,
        kv_event_sink=None if events is None else events.append,
        eos_token_id=eos_token_id,
    )
