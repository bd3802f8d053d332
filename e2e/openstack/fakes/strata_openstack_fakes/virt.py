"""A Nova fake virt driver with a stable node identity and three fake H100 GPUs."""
from oslo_serialization import jsonutils

from nova.virt import fake

GPU_VENDOR_ID = '10de'    # NVIDIA
GPU_PRODUCT_ID = '2330'   # H100 SXM5 80GB
GPU_COUNT = 3


def fake_gpus():
    return [{
        'address': '0000:%02x:00.0' % (0x81 + i),
        'vendor_id': GPU_VENDOR_ID,
        'product_id': GPU_PRODUCT_ID,
        'dev_type': 'type-PCI',
        'status': 'available',
        'parent_addr': None,
        'numa_node': None,
        'label': 'label_%s_%s' % (GPU_VENDOR_ID, GPU_PRODUCT_ID),
    } for i in range(GPU_COUNT)]


class StrataFakeDriver(fake.FakeDriverWithoutFakeNodes):
    """FakeDriverWithoutFakeNodes (one node named after [DEFAULT] host, its UUID kept in
    [DEFAULT] state_path/compute_id) plus GPU_COUNT passthrough-able PCI devices that
    match `[pci] device_spec = {"vendor_id": "10de", "product_id": "2330"}`."""

    vcpus = 64
    memory_mb = 131072
    local_gb = 2000

    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        if resources:
            resources['pci_passthrough_devices'] = jsonutils.dumps(fake_gpus())
        return resources
