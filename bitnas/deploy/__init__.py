"""Deployment: bit-packed export of trained networks and loading them for inference."""
from bitnas.deploy.export import export_checkpoint, export_network, load_export, network_from_export, pack_signs, unpack_signs

__all__ = ["export_checkpoint", "export_network", "load_export", "network_from_export", "pack_signs", "unpack_signs"]
