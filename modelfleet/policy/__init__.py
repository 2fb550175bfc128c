"""Pure placement decisions: filters, scorers, pickers, admission and migration planning.

Nothing here does I/O or reads a clock or an RNG of its own; hosts (the live scheduler and the
cluster simulator) build everything from config and pass the clock and the RNG in. The public
surface is described in ``/work/helpers/POLICY_INTERFACE.md`` and in each module's docstring.
"""
