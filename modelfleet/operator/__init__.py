"""The modelfleet operator (kopf): reconciles ModelPools into vLLM Deployments per variant.

Not built yet; the package exists so that the layer contracts in ``.importlinter`` can name it.
It sits beside ``sim``, ``scheduler`` and ``testing`` above ``engine`` and ``policy``, imports
none of them but ``policy`` and ``api``, and never imports Ray, ZMQ or an HTTP client other
than what kopf and the ``kubernetes`` client bring (install ``modelfleet[operator]``).
"""
