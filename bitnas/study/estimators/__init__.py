"""Architecture estimators for rank fidelity: zero-cost ones (`zero_cost`, scores of an untrained
network) and where they are computed for a study (`protocol`). The search-based estimators are
each strategy's own `SearchStrategy.estimate`, run by `bitnas.study.fidelity`."""
