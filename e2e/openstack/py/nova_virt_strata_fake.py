"""Installed by e2e/openstack/cloud prepare as nova/virt/strata_fake.py: Nova loads its
compute_driver from inside nova.virt, so `compute_driver = strata_fake.StrataFakeDriver`."""
from strata_openstack_fakes.virt import StrataFakeDriver  # noqa: F401
