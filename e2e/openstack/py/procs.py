"""procs.py RUN_DIR [SID ...]: the pids of every process of one cloud, one a line.

A process belongs to the cloud whose run folder RUN_DIR is when its environment holds
STRATA_OS_RUN=RUN_DIR (set by e2e/openstack/cloud when it starts a service; children
inherit it). Fallback, should a process have overwritten its environ (setproctitle does
unless SPT_NOENV is set): it is in the session of one of our services (SIDs: the pids
that setsid gave them) and its command line names the run folder or the service.
"""
import os
import sys

run_dir = sys.argv[1].rstrip('/').encode()
sids = {int(x) for x in sys.argv[2:] if x.isdigit()}
marker = b'STRATA_OS_RUN=' + run_dir
name = os.path.basename(run_dir)
me = os.getpid()
for p in os.listdir('/proc'):
    if not p.isdigit() or int(p) == me:
        continue
    try:
        with open('/proc/%s/environ' % p, 'rb') as f:
            if marker in f.read().split(b'\0'):
                print(p)
                continue
        if not sids:
            continue
        with open('/proc/%s/stat' % p, 'rb') as f:
            sid = int(f.read().rsplit(b')', 1)[1].split()[3])
        if sid in sids:
            with open('/proc/%s/cmdline' % p, 'rb') as f:
                cmd = f.read()
            if run_dir in cmd or b'[strata-os-' + name + b'-' in cmd:
                print(p)
    except (OSError, ValueError, IndexError):
        pass
