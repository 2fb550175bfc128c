"""Pure placement decisions: filters, scorers, pickers, admission and migration planning.

Nothing here does I/O or reads a clock or an RNG of its own; hosts (the live scheduler and the
cluster simulator) build everything from config and pass the clock and the RNG in. Entry
points: ``baselines.build_policy`` (a named policy), ``config.build_profile`` (a placement
spec), ``migration.MigrationPlanner`` and ``admission.admit``; the snapshots they read are in
``types``.
"""
