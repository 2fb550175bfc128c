"""The parameter count a model id states (what the operator's autoscaler prior is sized by)."""

from __future__ import annotations

import pytest

from modelfleet.policy.prior import params_from_model_id

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", 8e9),
        ("meta-llama/Llama-3.1-70B-Instruct", 70e9),
        ("meta-llama/Llama-3.2-1B", 1e9),
        ("Qwen/Qwen2.5-0.5B-Instruct", 0.5e9),
        ("Qwen/Qwen3-30B-A3B", 30e9),  # total, not the 3B active
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", 56e9),
        ("HuggingFaceTB/SmolLM2-135M", 0.135e9),
        ("llama-70b", 70e9),
        ("/models/Llama-3.1-70B-Instruct/", 70e9),  # a path on a PVC
        ("/models/70B/weights", 70e9),  # the last component that states a size
        ("gpt2", None),
        ("/models/my-model", None),
        ("org/model-v0.1", None),  # a version is no size
        ("org/model-0B", None),
        ("org/B-model", None),
    ],
)
def test_params_from_model_id(model: str, params: float | None) -> None:
    got = params_from_model_id(model)
    if params is None:
        assert got is None
    else:
        assert got == pytest.approx(params)
