"""Studies: arms × seeds under one protocol, rank fidelity, the report researchers ask for."""
