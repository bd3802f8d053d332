"""Seeds a cloud started by e2e/openstack/cloud (run with the venv's python).

    seed.py STATE_JSON keystone              service users, endpoints, project/user strata
    seed.py STATE_JSON resources --timeout S waits until usable; flavors, image, public
                                             network; writes clouds.yaml, env, cloud.json

Plain REST through keystoneauth1, one process, so that seeding costs no CLI start-ups.
"""
import json
import os
import subprocess
import sys
import time

from keystoneauth1 import adapter
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

REGION = 'RegionOne'
T0 = time.monotonic()


def log(msg):
    print('[%6.1fs] %s' % (time.monotonic() - T0, msg), flush=True)


def load_state(path):
    with open(path) as f:
        st = json.load(f)
    st['auth_url'] = 'http://127.0.0.1:%d/v3' % st['ports']['keystone']
    return st


def url(st, svc, path=''):
    return 'http://127.0.0.1:%d%s' % (st['ports'][svc], path)


def admin_session(st):
    auth = v3.Password(auth_url=st['auth_url'], username='admin',
                       password=st['admin_password'], project_name='admin',
                       user_domain_name='Default', project_domain_name='Default')
    return ks_session.Session(auth=auth, timeout=120)


def api(sess, service_type, **kw):
    return adapter.Adapter(sess, service_type=service_type, interface='public',
                           region_name=REGION, **kw)


def retry(what, fn, timeout=120, interval=1.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - services still starting
            if time.monotonic() > deadline:
                raise RuntimeError('%s: gave up after %d s: %s' % (what, timeout, e))
            time.sleep(interval)


# ---------------------------------------------------------------------------------------
# keystone
# ---------------------------------------------------------------------------------------

def seed_keystone(st):
    sess = admin_session(st)
    ks = api(sess, 'identity')
    retry('keystone token', lambda: sess.get_token(), timeout=60, interval=0.5)

    def find(kind, name, **filters):
        params = dict(name=name, **filters)
        items = ks.get('/%s' % kind, params=params).json()[kind]
        return items[0]['id'] if items else None

    def role(name):
        rid = find('roles', name)
        if rid is None:
            rid = ks.post('/roles', json={'role': {'name': name}}).json()['role']['id']
        return rid

    def project(name):
        pid = find('projects', name, domain_id='default')
        if pid is None:
            pid = ks.post('/projects', json={'project': {
                'name': name, 'domain_id': 'default',
                'description': 'strata e2e'}}).json()['project']['id']
        return pid

    def user(name, password, default_project):
        uid = find('users', name, domain_id='default')
        if uid is None:
            uid = ks.post('/users', json={'user': {
                'name': name, 'password': password, 'domain_id': 'default',
                'default_project_id': default_project}}).json()['user']['id']
        return uid

    def grant(project_id, user_id, role_id):
        ks.put('/projects/%s/users/%s/roles/%s' % (project_id, user_id, role_id))

    admin_role, member_role, service_role = role('admin'), role('member'), role('service')
    role('reader')
    service_project = project('service')
    for name in ('glance', 'placement', 'neutron', 'nova'):
        uid = user(name, st['service_password'], service_project)
        grant(service_project, uid, admin_role)
        grant(service_project, uid, service_role)
    strata_project = project('strata')
    strata_user = user('strata', st['user_password'], strata_project)
    grant(strata_project, strata_user, member_role)

    services = [
        ('image', 'glance', url(st, 'glance')),
        ('placement', 'placement', url(st, 'placement')),
        ('network', 'neutron', url(st, 'neutron')),
        ('compute', 'nova', url(st, 'nova', '/v2.1')),
    ]
    for stype, sname, endpoint in services:
        existing = ks.get('/services', params={'type': stype}).json()['services']
        if existing:
            sid = existing[0]['id']
        else:
            sid = ks.post('/services', json={'service': {
                'type': stype, 'name': sname, 'enabled': True}}).json()['service']['id']
        have = ks.get('/endpoints', params={'service_id': sid}).json()['endpoints']
        for iface in ('public', 'internal', 'admin'):
            if not any(e['interface'] == iface for e in have):
                ks.post('/endpoints', json={'endpoint': {
                    'service_id': sid, 'interface': iface, 'url': endpoint,
                    'region_id': REGION, 'enabled': True}})
    st_out = {'strata_project_id': strata_project, 'strata_user_id': strata_user,
              'service_project_id': service_project}
    with open(os.path.join(st['dir'], 'keystone.json'), 'w') as f:
        json.dump(st_out, f)
    log('keystone seeded: project strata %s, user strata %s' % (strata_project, strata_user))


# ---------------------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------------------

def wait_http(st, svc, path, deadline):
    import urllib.error
    import urllib.request

    while True:
        try:
            urllib.request.urlopen(url(st, svc, path), timeout=10).read()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (300, 401, ...) means the app is loaded
        except Exception as e:  # noqa: BLE001
            if time.monotonic() > deadline:
                raise RuntimeError('%s does not answer on %s: %s' % (svc, url(st, svc, path), e))
            time.sleep(0.5)


def nova_manage(st, *args):
    cmd = [os.path.join(st['venv'], 'bin', 'nova-manage'), '--config-file',
           os.path.join(st['dir'], 'etc', 'nova', 'nova.conf')] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def gpu_count(st):
    import pymysql

    conn = pymysql.connect(host='127.0.0.1', port=st['mysql_port'], user='strata',
                           password=st['db_password'], database='nova_cell1')
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM pci_devices WHERE deleted = 0 AND "
                        "vendor_id = '10de' AND product_id = '2330'")
            return cur.fetchone()[0]
    finally:
        conn.close()


def seed_resources(st, timeout):
    deadline = time.monotonic() + timeout
    for svc, path in (('glance', '/'), ('placement', '/'), ('neutron', '/'), ('nova', '/')):
        wait_http(st, svc, path, deadline)
    log('all APIs answer')
    sess = admin_session(st)
    nova = api(sess, 'compute', default_microversion='2.79')
    glance = api(sess, 'image')
    neutron = api(sess, 'network')
    placement = api(sess, 'placement', default_microversion='1.39')
    remaining = lambda: max(5, deadline - time.monotonic())  # noqa: E731

    # -- flavors (public)
    flavors = {}
    existing = {f['name']: f['id'] for f in nova.get('/flavors?is_public=None').json()['flavors']}
    for fname, vcpus, ram, disk, extra in (
            ('small', 1, 512, 1, {}),
            ('gpu1', 1, 512, 1, {'pci_passthrough:alias': 'h100:1'}),
            ('gpu2', 2, 1024, 1, {'pci_passthrough:alias': 'h100:2'})):
        fid = existing.get(fname)
        if fid is None:
            fid = nova.post('/flavors', json={'flavor': {
                'name': fname, 'vcpus': vcpus, 'ram': ram, 'disk': disk,
                'os-flavor-access:is_public': True}}).json()['flavor']['id']
            if extra:
                nova.post('/flavors/%s/os-extra_specs' % fid, json={'extra_specs': extra})
        flavors[fname] = fid
    log('flavors: %s' % flavors)

    # -- image (public, a few KB of bytes)
    image_name = 'cirros-fake'
    imgs = glance.get('/v2/images', params={'name': image_name}).json()['images']
    if imgs:
        image_id = imgs[0]['id']
    else:
        image_id = glance.post('/v2/images', json={
            'name': image_name, 'container_format': 'bare', 'disk_format': 'raw',
            'visibility': 'public', 'min_disk': 0, 'min_ram': 0,
            'os_distro': 'cirros', 'hw_architecture': 'x86_64'}).json()['id']
        data = (b'strata fake image\n' * 256)[:4096]
        glance.put('/v2/images/%s/file' % image_id, data=data,
                   headers={'Content-Type': 'application/octet-stream'})
    retry('image active', lambda: _expect(
        glance.get('/v2/images/%s' % image_id).json()['status'], 'active'), timeout=60)
    log('image %s %s' % (image_name, image_id))

    # -- external network "public" (admin-owned, not shared), subnet in TEST-NET-3
    nets = neutron.get('/v2.0/networks', params={'name': 'public'}).json()['networks']
    if nets:
        ext_id = nets[0]['id']
    else:
        ext_id = neutron.post('/v2.0/networks', json={'network': {
            'name': 'public', 'router:external': True, 'shared': False,
            'provider:network_type': 'flat', 'provider:physical_network': 'public',
            'description': 'strata e2e external network (no data plane)'}}).json()['network']['id']
        neutron.post('/v2.0/subnets', json={'subnet': {
            'name': 'public-subnet', 'network_id': ext_id, 'ip_version': 4,
            'cidr': '203.0.113.0/24', 'gateway_ip': '203.0.113.1', 'enable_dhcp': False,
            'allocation_pools': [{'start': '203.0.113.10', 'end': '203.0.113.250'}]}})
    log('external network public %s' % ext_id)

    # -- nova-compute up, its provider in placement, host mapped, GPUs known
    host = st['host']

    def compute_up():
        svcs = nova.get('/os-services', params={'binary': 'nova-compute'}).json()['services']
        up = [s for s in svcs if s['host'] == host and s['state'] == 'up']
        if not up:
            raise RuntimeError('nova-compute not up yet: %s' % svcs)
    retry('nova-compute up', compute_up, timeout=remaining(), interval=1)
    log('nova-compute is up')

    def provider():
        rps = placement.get('/resource_providers', params={'name': host}).json()['resource_providers']
        if not rps:
            raise RuntimeError('no resource provider %s yet' % host)
        inv = placement.get('/resource_providers/%s/inventories' % rps[0]['uuid']).json()['inventories']
        if 'VCPU' not in inv:
            raise RuntimeError('provider %s has no VCPU inventory yet' % host)
        return rps[0]['uuid']
    rp = retry('placement provider', provider, timeout=remaining(), interval=1)
    log('placement provider %s' % rp)

    def mapped():
        rc, out = nova_manage(st, 'cell_v2', 'discover_hosts', '--verbose')
        if rc != 0:
            raise RuntimeError('discover_hosts: %s' % out)
        rc, out = nova_manage(st, 'cell_v2', 'list_hosts')
        if host not in out:
            raise RuntimeError('host %s not mapped yet: %s' % (host, out))
    retry('host mapping', mapped, timeout=remaining(), interval=2)
    log('host %s mapped to cell1' % host)

    def gpus():
        n = gpu_count(st)
        if n != 3:
            raise RuntimeError('%d fake GPUs tracked, want 3' % n)
    retry('fake GPUs', gpus, timeout=remaining(), interval=1)
    hyps = nova.get('/os-hypervisors').json()['hypervisors']
    log('3 fake GPUs tracked; hypervisors: %s' % hyps)

    write_outputs(st, flavors, image_id, image_name, ext_id)


def _expect(value, want):
    if value != want:
        raise RuntimeError('%s, want %s' % (value, want))


def write_outputs(st, flavors, image_id, image_name, ext_id):
    d = st['dir']
    clouds_yaml = os.path.join(d, 'clouds.yaml')

    def cloud(user, password, project):
        return ('    auth:\n'
                '      auth_url: %s\n'
                '      username: %s\n'
                '      password: %s\n'
                '      project_name: %s\n'
                '      user_domain_name: Default\n'
                '      project_domain_name: Default\n'
                '    region_name: %s\n'
                '    interface: public\n'
                '    identity_api_version: 3\n' % (st['auth_url'], user, password, project, REGION))
    with open(clouds_yaml, 'w') as f:
        f.write('clouds:\n  strata-test:\n' + cloud('strata', st['user_password'], 'strata') +
                '  strata-admin:\n' + cloud('admin', st['admin_password'], 'admin'))
    os.chmod(clouds_yaml, 0o600)
    with open(os.path.join(d, 'env'), 'w') as f:
        for k, v in (('OS_AUTH_URL', st['auth_url']), ('OS_AUTH_TYPE', 'password'),
                     ('OS_USERNAME', 'strata'), ('OS_PASSWORD', st['user_password']),
                     ('OS_PROJECT_NAME', 'strata'), ('OS_USER_DOMAIN_NAME', 'Default'),
                     ('OS_PROJECT_DOMAIN_NAME', 'Default'), ('OS_REGION_NAME', REGION),
                     ('OS_INTERFACE', 'public'), ('OS_IDENTITY_API_VERSION', '3')):
            f.write('export %s=%s\n' % (k, v))
    with open(os.path.join(d, 'keystone.json')) as f:
        ks = json.load(f)
    out = {
        'name': st['name'], 'auth_url': st['auth_url'], 'region': REGION,
        'clouds_yaml': clouds_yaml, 'cloud': 'strata-test', 'admin_cloud': 'strata-admin',
        'username': 'strata', 'password': st['user_password'], 'project': 'strata',
        'project_id': ks['strata_project_id'],
        'user_domain': 'Default', 'project_domain': 'Default',
        'admin_username': 'admin', 'admin_password': st['admin_password'],
        'admin_project': 'admin',
        'image_id': image_id, 'image_name': image_name, 'external_network_id': ext_id,
        'external_network_name': 'public',
        'flavors': flavors, 'gpu_alias': 'h100', 'gpus_per_host': 3,
        'compute_host': st['host'],
        'token_expiration': st['token_expiration'],
        'env_file': os.path.join(d, 'env'), 'run_dir': d,
        'endpoints': {
            'identity': st['auth_url'],
            'compute': url(st, 'nova', '/v2.1'),
            'network': url(st, 'neutron'),
            'image': url(st, 'glance'),
            'placement': url(st, 'placement'),
        },
    }
    with open(os.path.join(d, 'cloud.json'), 'w') as f:
        f.write(json.dumps(out) + '\n')
    log('cloud.json written')


def main():
    state = load_state(sys.argv[1])
    what = sys.argv[2]
    try:
        if what == 'keystone':
            seed_keystone(state)
        elif what == 'resources':
            timeout = 600
            if '--timeout' in sys.argv:
                timeout = int(sys.argv[sys.argv.index('--timeout') + 1])
            seed_resources(state, timeout)
        else:
            sys.exit('unknown command %s' % what)
    except ks_exc.HttpError as e:
        log('HTTP error: %s %s: %s' % (e.http_status, e.url, e.response.text if e.response is not None else ''))
        raise


if __name__ == '__main__':
    main()
