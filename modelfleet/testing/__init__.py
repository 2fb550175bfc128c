"""Test utilities shipped with modelfleet: fakes and a real local control plane.

Submodules are imported explicitly (``from modelfleet.testing.cluster import Cluster``); this
package imports nothing on its own, so importing a fake never pulls in the cluster machinery.
"""
