"""The modelfleet scheduler (a Ray Serve application): model selection, placement, migration.

Not built yet; the package exists so that the layer contracts in ``.importlinter`` can name it.
It sits beside ``sim``, ``operator`` and ``testing`` above ``engine`` and ``policy``, runs the
same policy objects as the simulator (through the routing host in ``modelfleet.policy``), and
never imports kopf or the Kubernetes client (install ``modelfleet[scheduler]``).
"""
