"""An ML2 mechanism driver that binds every port, with no agent and no data plane."""
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

VIF_TYPE = 'ovs'
VIF_DETAILS = {'port_filter': True, 'ovs_hybrid_plug': False, 'connectivity': 'l2'}
SUPPORTED_VNIC_TYPES = ('normal', 'direct', 'macvtap', 'baremetal', 'direct-physical',
                        'virtio-forwarder', 'smart-nic', 'vdpa', 'remote-managed')


class StrataFakeMechanismDriver(api.MechanismDriver):
    """Binds any port on any segment (flat, vxlan, ...) with vif_type=ovs.

    The port becomes ACTIVE at binding time (set_binding(..., status=ACTIVE)), as it
    would once a real L2 agent had wired it.
    """

    def initialize(self):
        LOG.info('strata fake ML2 mechanism driver loaded')

    @property
    def connectivity(self):
        return 'l2'

    def bind_port(self, context):
        if context.current.get('binding:vnic_type', 'normal') not in SUPPORTED_VNIC_TYPES:
            return
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], VIF_TYPE, dict(VIF_DETAILS),
                                status=constants.PORT_STATUS_ACTIVE)
            LOG.debug('bound port %s on segment %s (%s)', context.current['id'],
                      segment[api.ID], segment.get(api.NETWORK_TYPE))
            return
