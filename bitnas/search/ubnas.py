"""UBNAS (Tan et al., TCSVT 2024), built from its named parts (METHODS §4.3).

- Binary supernet in the `ubnas` space: skip, max/avg pool, binary conv 3×3/5×5 and binary
  dilated conv 3×3/5×5 (rate 2), ApproxSign activations (the space's default).
- Module structure of the binary ops from `structure` (default: the space's `ebnas`,
  BN → sign → bconv → BN → + shortcut → PReLU; any of `bitnas.space.structures.STRUCTURES`).
- Channel sampling ratio per cell type: K = 8 in normal, 4 in reduction cells (EBNAS); when K
  does not divide the channels the largest divisor ≤ K is used (with a warning).
- PC-DARTS edge normalisation and warm-up (30 % of the epochs), Adam lr 6e-4 on α/β.
- Early stopping (`early_stopping.py`). Default: `genotype` (stop when the derived genotype has
  not changed for `early_stop_patience` = 3 epochs). Measured on Fashion-MNIST (1000 images, C=8,
  5 cells, 12 epochs of which 4 warm-up, seeds 0 and 1, early_stop=none, criteria replayed on the
  recorded α): right after warm-up α is still near uniform, so the derived normal cell holds ≥ 2
  skip connections by chance (a uniform draw over 7 ops gives that about a third of the time).
  The DARTS+ `skip` rule (and so `any`) fired at the first α epoch of seed 1 and kept a genotype
  sharing 25 % of its edges with the final one, 11 points lower in validation accuracy; skips
  then vanished in both seeds. The genotype kept changing every epoch (1–7 of its 16 edges), so
  `stable`/`genotype` never fired early for any patience 1–4: they cannot stop a search that
  has not settled. `genotype` is the rule whose firing guarantees the result has not moved for P
  epochs; P = 3 is conservative, as the short runs cannot separate patiences. Use `skip`/`any`
  with `early_stop_min_epochs` to guard against late skip collapse.
"""
from __future__ import annotations

import logging

from bitnas.search.darts import DifferentiableSearch
from bitnas.search.strategy import STRATEGIES, SearchContext

log = logging.getLogger("bitnas")


class UBNASSearch(DifferentiableSearch):
    """Binary differentiable search with partial channels per cell type and early stopping."""

    name = "ubnas"
    default_space = "ubnas"
    default_k = (8, 4)
    default_edge_norm = True
    default_warmup_fraction = 0.3
    default_arch_lr = 6e-4
    default_early_stop = "genotype"

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        oc = self.op_config(self.cfg.precision)
        log.info("ubnas: %s supernet, module structure %s, activation %s", self.cfg.precision, oc.structure,
                 oc.activation)


STRATEGIES.register("ubnas", UBNASSearch)
