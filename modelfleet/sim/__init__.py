"""Discrete-event cluster simulator: traces, the cluster event loop, metrics and reports.

Runs the live placement policy objects (``modelfleet.policy``) against engine models
(``modelfleet.engine``) stepped in virtual time. No asyncio, no wall clock, seeded RNG.
"""
