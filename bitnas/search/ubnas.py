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
  skip connections by chance; the DARTS+ `skip` rule (and so `any`) fired at the first α epoch
  of seed 1 and kept a genotype sharing 25 % of its edges with the final one, 11 points lower in
  validation accuracy. Use `skip`/`any` with `early_stop_min_epochs` against late skip collapse.

  Why `genotype` never fired in the study (issue 17; Bi-Real structure, ApproxSign, C=8, 5 cells,
  12 epochs, early_stop=none, every epoch's genotype and α in metrics.jsonl): no defect — the
  criterion cannot trigger at this scale. Adam moves each α by about its lr (6e-4) per step,
  whatever the gradient's size, and a search here makes 8–16 α steps per epoch, 64–128 in all:
  the mean spread of an edge's α over its 7 ops grew by 0.007 (1000 images) / 0.015 (2000 images)
  per epoch to 0.06 / 0.11 at the end, the median gap between an edge's two strongest ops stayed
  at 0.003 / 0.01 — an edge's largest and smallest op weight end 6 % / 12 % apart, and the genotype is
  decided by near-ties that gradient noise flips. The edges changed per α epoch fell
  14, 6, 4, 3, 2, 4, 1, 0 (1000 images, seed 0) and 15, 6, 5, 5, 2, 3, 0, 1 (2000 images, seed 1):
  the genotype settles only in the last epochs, so 3 unchanged epochs in a row (4 identical
  genotypes) never occur within 8 α epochs. With 2000 images the normal cell held 0–1
  convolutions from the first α epoch on: the cells drift to pooling at once while the edges
  keep reshuffling among pooling choices, which an early stop cannot repair (see the collapse
  remedies). `early_stop_tolerance` makes the criterion usable here: the genotype counts as
  unchanged when it differs from each of the last P epochs' genotypes in at most that many
  edges. Replayed, patience 1 with tolerance 3 fires after the 4th α epoch of seed 0 (45 % of
  the search time saved; that genotype is 6 of 16 edges from the final one) and after the 5th of
  seed 1 (22 % saved, 4 edges off); patience 2 fires before the last epoch only with tolerance
  ≥ 4 (seed 0) / ≥ 3 (seed 1), patience 3 with no tolerance ≤ 4. Run for real on seed 0, the
  search stopped after epoch 8 of 12 (10,000 of 16,000 images). Whether such a stop costs
  accuracy is a study question (arms `ubnas_stop` / `ubnas_nostop`); the default stays until it is answered.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from bitnas.search.darts import DifferentiableSearch
from bitnas.search.pcdarts import PCDartsSearch
from bitnas.search.strategy import STRATEGIES, SearchContext

log = logging.getLogger("bitnas")


class UBNASSearch(DifferentiableSearch):
    """Binary differentiable search with partial channels per cell type and early stopping."""

    name = "ubnas"
    default_space = "ubnas"
    defaults = replace(PCDartsSearch.defaults, k=(8, 4), early_stop="genotype")  # PC-DARTS' warm-up, edge norm, α lr

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        oc = self.op_config(self.cfg.precision)
        log.info("ubnas: %s supernet, module structure %s, activation %s", self.cfg.precision, oc.structure,
                 oc.activation)


STRATEGIES.register("ubnas", UBNASSearch)
