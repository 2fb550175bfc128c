"""``modelfleet.scheduler.serve:build_app``, the application builder a Serve config names.

The chart's RayService passes ``args: {argv: [...]}`` with the flags it gives the plain
Deployment (``charts/modelfleet/templates/_scheduler.tpl``, ``scheduler-rayservice.yaml``):
``CHART_ARGV`` below is that list as rendered with the chart's defaults. A bad key, flag or
fleet file is refused with an error naming it, before anything is deployed; a good one is
deployed on a real Ray cluster with ``serve.run`` and answers the OpenAI SDK.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelfleet.scheduler.serve import build_app

from .conftest import free_port
from .fleet_helpers import endpoints_yaml, fleet_yaml, pool_yaml, start_engine, stop_all

CHART_ARGV = [
    "--kubernetes", "--host=0.0.0.0", "--port=8000", "--scrape-period=0.05",
    "--log-level=warning", "--namespace=serving", "--replicas=2",
]  # fmt: skip


@pytest.mark.unit
def test_the_charts_argv_builds_the_kubernetes_app() -> None:
    app = build_app({"argv": CHART_ARGV})
    deployment = app._bound_deployment  # the one ingress deployment
    settings, share, _hub, own_hub = deployment.init_args
    assert deployment.num_replicas == 2 and (share, own_hub) == ("actor", True)
    assert settings.kubernetes and settings.namespace == "serving" and settings.replicas == 2


@pytest.mark.unit
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"argv": ["--kubernetes"], "replica": 2}, "args: replica: Extra inputs are not permitted"),
        ({}, "args: argv: Field required"),
        ({"argv": "--kubernetes"}, "args: argv: Input should be a valid list"),
        ({"argv": ["--kubernetes", "--replicas=0"]},
         "argv: argument --replicas: must be a positive integer, got '0'"),
        ({"argv": ["--kubernetes", "--bogus"]}, "argv: unrecognized arguments: --bogus"),
        ({"argv": ["--replicas=2"]},
         "argv: one of the arguments --config --kubernetes is required"),
        ({"argv": ["--kubernetes", "--no-ray"]}, "argv: --no-ray: not for a Serve application"),
        ({"argv": ["--kubernetes", "--ingress=direct", "--ray-cpus=4"]},
         "argv: --ingress, --ray-cpus: not for a Serve application"),
    ],
)  # fmt: skip
def test_bad_args_are_refused_naming_the_key_or_flag(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        build_app(args)
    assert message in str(err.value)


@pytest.mark.unit
def test_a_bad_fleet_file_is_refused_with_its_problems(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(
        textwrap.dedent(
            """
            apiVersion: modelfleet.io/v1alpha1
            kind: RoutingPolicy
            metadata: {name: chat, namespace: default}
            spec:
              modelNames: [chat]
              defaultTargets: [{pool: big, weight: -1}]
            """
        )
    )
    with pytest.raises(ValueError) as err:
        build_app({"argv": ["--config", str(tmp_path)]})
    assert f"build_app: {tmp_path}: " in str(err.value) and "weight" in str(err.value)


@pytest.fixture
def ray_cluster() -> Iterator[int]:
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


@pytest.mark.integration
def test_serve_run_of_the_built_app_serves_the_fleet(tmp_path: Path, ray_cluster: int) -> None:
    from ray import serve

    engines = [start_engine("small-3b", model="llama-3.2-3b", time_scale=0.02) for _ in range(2)]
    try:
        pool = pool_yaml("small", "small-3b", {"h100": "h100-80gb"})
        policy = textwrap.dedent(
            """
            apiVersion: modelfleet.io/v1alpha1
            kind: RoutingPolicy
            metadata: {name: chat, namespace: default}
            spec:
              modelNames: [chat]
              defaultTargets: [{pool: small}]
            """
        )
        rows = [("small", "h100", e) for e in engines]
        (tmp_path / "fleet.yaml").write_text(fleet_yaml(pool, policy, endpoints_yaml(rows)))
        # The chart's flags with a file for a fleet; --host/--port are the Serve config's.
        argv = ["--config", str(tmp_path), "--host=0.0.0.0", "--port=1", "--replicas=2"]
        serve.run(build_app({"argv": argv}), name="modelfleet", route_prefix="/")
        url = f"http://127.0.0.1:{ray_cluster}"
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert {m.id for m in client.models.list()} == {"chat"}
        for i in range(4):
            chat = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4
            )
            assert chat.model == "small-3b"
            assert chat.usage is not None and chat.usage.completion_tokens == 4
        status = serve.status().applications["modelfleet"]
        assert status.deployments["scheduler"].replica_states == {"RUNNING": 2}
    finally:
        stop_all(engines)


@pytest.mark.integration
def test_the_hub_of_a_shared_app_lives_while_its_driver_serves(ray_cluster: int) -> None:
    """The hub is named but not detached: the driver that built the app must keep it alive."""
    import gc
    import time

    import ray

    from modelfleet.scheduler.runtime import RuntimeSettings
    from modelfleet.scheduler.serve import HUB_NAME, scheduler_app

    scheduler_app(RuntimeSettings(config=None, kubernetes=True), replicas=2, share="actor")
    gc.collect()  # the builder's own handle is gone; only what the driver keeps remains
    hub = ray.get_actor(HUB_NAME)
    ray.get(hub.stats.remote(), timeout=30)
    del hub
    gc.collect()
    time.sleep(3)  # Ray kills an unreferenced actor within about a second
    assert ray.get(ray.get_actor(HUB_NAME).stats.remote(), timeout=30)["exchanges"] == 0
