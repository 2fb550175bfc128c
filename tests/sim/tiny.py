"""Tiny traces and fleets shared by the simulator tests (fast: a few hundred ms per run)."""

from __future__ import annotations

from modelfleet.sim.fleet import EngineSpec, mixed_fleet
from modelfleet.sim.traces import SharedPrefixConfig, Trace, generate_shared_prefix


def tiny_trace(seed: int = 1, n_conv: int = 24) -> Trace:
    cfg = SharedPrefixConfig(
        num_conversations=n_conv,
        num_groups=3,
        system_prompt_tokens=512,
        max_turns=3,
        user_tokens_mean=300.0,
        output_tokens_mean=40.0,
        conversation_rate=6.0,
        think_time_s=1.0,
        block_tokens=64,
        max_prompt_tokens=4000,
    )
    return generate_shared_prefix(cfg, seed=seed)


def tiny_fleet(blocks: int = 600) -> tuple[EngineSpec, ...]:
    return mixed_fleet(
        {"h100-80gb": 1, "a100-80gb": 1, "l40s": 1},
        overrides={"num_gpu_blocks": blocks, "max_model_len": 8192, "max_num_seqs": 16},
    )
