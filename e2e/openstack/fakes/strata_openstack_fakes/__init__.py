"""Fakes for strata's e2e OpenStack test cloud (e2e/openstack/cloud).

ml2:  an ML2 mechanism driver that binds every port (vif_type ovs, port ACTIVE)
      without any agent, so that Nova can boot servers on the fake hypervisor.
virt: a Nova virt driver (reachable as compute_driver = strata_fake.StrataFakeDriver
      through the shim nova/virt/strata_fake.py that `cloud prepare` installs) with a
      stable node and three fake NVIDIA H100 PCI devices (10de:2330).
"""
