"""Helpers shared by the test tiers, imported as ``from support.<module> import ...``.

``tests/`` is on ``sys.path`` because ``tests/conftest.py`` lives there (pytest's default
"prepend" import mode), so every tier imports the same modules by the same names:

* :mod:`support.engine_core`: a small ``EngineCore`` and its toy model function;
* :mod:`support.engine_server`: an in-process engine server on a free loopback port;
* :mod:`support.manifests`: minimal valid manifests of the three kinds, for the cluster tier;
* :mod:`support.example_objects`: the ``examples/`` manifests parsed into typed objects;
* :mod:`support.fake_control`: a hand-written scheduler control service (gRPC) on loopback;
* :mod:`support.scheduler_process`: ``modelfleet scheduler`` as a child process (start, stop,
  leftovers of its Ray session).
"""
