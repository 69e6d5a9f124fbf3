"""Architecture estimators for rank fidelity, one module each: `search` (a search's own score of a
genotype, from its checkpoint), `zero_cost` (scores of an untrained network) and `protocol` (the
zero-cost scores of genotypes under a study's training protocol)."""
