"""Deployment: bit-packed export of trained networks and inference on the float path or the
XNOR-popcount engine."""
from bitnas.deploy.export import (export_checkpoint, export_network, load_export, network_from_export, pack_signs,
                                  read_export, unpack_signs, write_export)

__all__ = ["export_checkpoint", "export_network", "load_export", "network_from_export", "pack_signs", "read_export",
           "unpack_signs", "write_export"]
