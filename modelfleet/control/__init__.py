"""The scheduler's control API: the contract between the operator and the scheduler.

``control.proto`` is the source of truth; ``control_pb2*.py`` are generated from it by
``scripts/gen-control.sh`` (grpcio-tools) and checked in; ``tests/unit/test_control_stubs.py``
fails when they drift. The scheduler serves ``Control`` (Drain, Undrain, ListEndpoints, Stats);
the operator calls it before it removes a pod and to read the load its autoscaler needs.

Calls carry ``authorization: Bearer <token>`` (:data:`AUTH_METADATA_KEY`); the scheduler refuses
calls without the shared token with ``UNAUTHENTICATED``.
"""

from __future__ import annotations

AUTH_METADATA_KEY = "authorization"
"""gRPC metadata key of the shared token (value ``Bearer <token>``)."""

DEFAULT_PORT = 50051
"""The scheduler's default gRPC port."""


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that authenticates a client with ``token``."""
    if not token:
        raise ValueError("the control API token must not be empty")
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),)


__all__ = ["AUTH_METADATA_KEY", "DEFAULT_PORT", "bearer"]
