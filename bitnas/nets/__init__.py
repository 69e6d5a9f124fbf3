"""Fixed networks built from genotypes."""
from bitnas.nets.cells import Cell, drop_path
from bitnas.nets.network import (
    NETWORKS, AuxiliaryHead, NetworkCIFAR, NetworkImageNet, arch_spec, build_network, network_from_checkpoint, network_from_spec,
)

__all__ = ["NETWORKS", "AuxiliaryHead", "Cell", "NetworkCIFAR", "NetworkImageNet", "arch_spec", "build_network", "drop_path", "network_from_checkpoint", "network_from_spec"]
