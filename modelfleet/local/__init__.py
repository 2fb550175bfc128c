"""The local default: ``modelfleet up`` (a real fleet of engine simulators behind the real
scheduler, from the manifests a cluster would use), ``modelfleet top`` (a live view of it) and
``modelfleet load`` (a trace replayed against any OpenAI endpoint).

A composition of hosts, above them and below the CLI: it starts the scheduler and the engines
and reads the simulator's traces, and no host imports it.
"""
