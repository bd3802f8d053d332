"""WSGI entry point for gunicorn: loads the OpenStack service named by the environment.

oslo.config would parse gunicorn's own command line (sys.argv), so it is cut to the
program name before the service's WSGI module is imported. Each service finds its
configuration through its own variable (OS_KEYSTONE_CONFIG_DIR, OS_NOVA_CONFIG_DIR, ...),
which e2e/openstack/cloud sets.
"""
import importlib
import os
import sys

sys.argv = sys.argv[:1]
application = importlib.import_module(os.environ['STRATA_WSGI_MODULE']).application
