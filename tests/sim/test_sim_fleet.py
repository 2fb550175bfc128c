"""What the simulator declares about its engines: the same numbers a cluster admin writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelfleet.policy.prior import kv_capacity_tokens
from modelfleet.sim.fleet import EngineSpec, declared_hardware, declared_speeds, pooled_fleet

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_declared_speeds_are_the_example_accelerator_profiles() -> None:
    docs = yaml.safe_load_all((ROOT / "examples/01-accelerators/profiles.yaml").read_text())
    for doc in docs:
        spec = doc["spec"]
        prefill, decode = declared_speeds(spec["simulatorProfile"])
        assert prefill == pytest.approx(spec["prefillSpeed"], abs=0.01)
        assert decode == pytest.approx(spec["decodeSpeed"], abs=0.01)


@pytest.mark.parametrize(
    ("accel", "model", "tp"),
    [("h100-80gb", "llama-3-8b", 1), ("l40s", "llama-3-8b", 1), ("a100-80gb", "llama-3-70b", 4)],
)
def test_declared_kv_capacity_is_close_to_what_the_engine_allocates(
    accel: str, model: str, tp: int
) -> None:
    spec = EngineSpec("e", accel, model, tp)
    declared = kv_capacity_tokens(declared_hardware(spec))
    cfg = spec.engine_config()
    real = cfg.resolved_num_gpu_blocks() * cfg.block_size
    assert declared == pytest.approx(real, rel=0.08)


def test_a_wrong_declaration_is_wrong_by_the_stated_factor() -> None:
    spec = EngineSpec("e", "l40s")
    honest, wrong = declared_hardware(spec), declared_hardware(spec, prior_error={"l40s": -0.3})
    assert wrong.prefill_speed == pytest.approx(honest.prefill_speed / 0.7)
    assert wrong.decode_speed == pytest.approx(honest.decode_speed / 0.7)
    with pytest.raises(ValueError, match="> -1"):
        declared_hardware(spec, prior_error={"l40s": -1.0})


def test_pooled_fleet_names_pools_and_engines() -> None:
    fleet = pooled_fleet([("llama-3-8b", 1, {"l40s": 1}), ("llama-3-70b", 4, {"h100-80gb": 2})])
    assert [(s.id, s.pool, s.tensor_parallel_size) for s in fleet] == [
        ("llama-3-8b/l40s-0", "llama-3-8b", 1),
        ("llama-3-70b/h100-80gb-0", "llama-3-70b", 4),
        ("llama-3-70b/h100-80gb-1", "llama-3-70b", 4),
    ]
    one = pooled_fleet([("llama-3-8b", 1, {"l40s": 2})])
    assert [s.id for s in one] == ["l40s-0", "l40s-1"]
    with pytest.raises(ValueError, match="not all zero"):
        pooled_fleet([("llama-3-8b", 1, {"l40s": 0})])
