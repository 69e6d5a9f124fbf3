"""Fixed networks built from genotypes."""
from bitnas.nets.cells import Cell, drop_path
from bitnas.nets.network import NETWORKS, AuxiliaryHead, NetworkCIFAR, NetworkImageNet, build_network

__all__ = ["NETWORKS", "AuxiliaryHead", "Cell", "NetworkCIFAR", "NetworkImageNet", "build_network", "drop_path"]
