"""CP-NAS (Zhuo et al., IJCAI 2020): Child-Parent search by sampling without replacement (METHODS §4.4).

Two supernets over the same space and sizes: the *child* (1-bit weights and activations in every
cell conv) and the *parent* (full precision, identical module names). Each keeps its own weights,
shared by every sampled architecture, and its own weight optimizer.

The loop, with K ops left on every edge (K = |ops| = 8 at the start):

    while K > 1:
        repeat T (`rounds`) times:
            every edge of both cell types draws a permutation of its remaining ops, so the
            K samples of a round use every remaining op of every edge exactly once;
            for e = 1..K: the single path made of the e-th op of every edge is trained for
                `sample_steps` mini-batches in the child and in the parent (the same batches;
                0 = one pass over the train split), both are measured on the fixed validation
                subset (`val_subset` images) and z is credited to every op of the sample:
                    printed: z = β_P·(A_P − A_C) + A_C      (Eq. 4.15 as printed)
                    flipped: z = A_C − β_P·(A_P − A_C)
        z̄ = mean of z over the T rounds, e(·) = softmax(z̄ / τ) over each edge's remaining ops;
        every edge loses the op with the lowest e(·); K ← K − 1; accumulators reset.

Decisions where the sources are silent (METHODS marks them [open]):
- Accuracies are in percent (0–100), so z is in accuracy points and τ (`cp_temperature`) = 1.
  τ only shapes e(·) for the records and plots: the removal and the edge ranking depend on the
  order of z̄ alone.
- Ties of z̄ on an edge remove the op listed first in the space (lowest op index), so in the
  DARTS order `none` goes first.
- The zero op takes part like any op; it can never be chosen for a genotype, so when it is one
  of the last two ops of an edge it is the one removed (whatever its score), which keeps every
  edge selectable. `cp_drop_zero_first` instead removes it from every edge at the first removal.
- Genotype: per node, the 2 incoming edges whose surviving op had the highest e(·) at the last
  removal step (ties: the lower input index). An edge where zero out-scored the survivor thus
  ranks low, as a strong zero in DARTS marks a weak edge. Before the search ends, each edge
  offers its best remaining non-zero op by the latest e(·) (uniform before the first removal).
- A_C and A_P use the validation split's first `val_subset` images of a seeded permutation
  (the same images for every sample), in no_grad, with BatchNorm normalising by each evaluation
  batch's own statistics (`cp_eval_bn: batch`; the running statistics of a weight-sharing
  supernet mix many paths and are stale for rarely sampled ops).
- Child and parent train on the same batches and are measured on the same images; with
  `cp_concurrent` (CPU, one process) they run on two threads at once, bitwise the same as one
  after the other.
- Weights: SGD (or `w_optimizer`), lr cosine from `w_lr` to `w_lr_min` over every training step
  the search will take, gradient clipping `grad_clip`.
- Optional warm-up (`cp_warmup_epochs`, "introduced to a differentiable NAS"): both supernets are
  trained for that many epochs on uniformly random single paths (`cp_warmup_mode: path`) or on
  the mixed op of every edge with α frozen at its near-uniform initialisation (`mixed`, the
  PC-DARTS warm-up) before sampling starts.

Defaults and the measurements behind them (CPU, Fashion-MNIST, single-threaded; small runs, one
seed each, so read them as sanity checks rather than results):
- `cp_eval_bn: batch`. 16 samples (C=4, 3 cells, 500/500 images, 10 steps per sample, 500
  validation images), each measured three ways; reference = SPOS-style recalibration (fresh
  running statistics from 8 training batches, then eval mode). Parent: Spearman 0.994 and mean
  |Δ| 0.5 points for batch statistics, 0.52 and 31.5 points for running statistics (they collapse
  to ≈18 % against ≈50 %). Child: 0.50 / 2.6 points against 0.37 / 2.7 points. Batch statistics
  match the recalibrated accuracy at no extra cost.
- `indicator: printed`, `beta_p: 0.5`. Searches with both signs and β_P ∈ {0.5, 2} (C=4, 3 cells,
  500/500 images, T=1, 4 steps per sample, 400 validation images, identical sampling until the
  first removal), the genotypes then trained 1-bit (C=8, 5 cells, 3 epochs on 3000 images, top-1
  on 2000 test images): printed 0.5 → 4 convolutions of 16 edges, 52.8 %; printed 2 → 5, 52.4 %;
  flipped 0.5 → 5, 50.8 %; flipped 2 → 8, 46.7 %. Accuracy falling at β_P = 2 fits the flipped
  sign, as METHODS suspects, but "fewer convolutions as β_P grows" did not appear for either sign:
  at this scale the child stays near chance (mean A_C 12–23 % per removal step) and the number
  of convolutions in a sample does not correlate with the gap A_P − A_C (r = 0.02 over 118
  samples). With no
  measurable case for changing the equation, the default is the formula as printed, which also
  gave the better children here; `indicator: flipped` is one key away. β_P = 0.5 gave the best
  child of the four runs, and with β_P = 1 the printed formula reduces to z = A_P (the child's
  accuracy cancels, so the search would ignore the 1-bit child), hence 0.5: z = ½(A_P + A_C).
- Weights: SGD lr 0.025 (DARTS). After 10 epochs of uniformly random single paths (C=4, 3 cells,
  500 images): validation accuracy on random paths child / parent 13.8 / 29.0 % with SGD 0.025,
  12.1 / 14.9 % with Adam 1e-3 (binary-training practice), 20.0 / 28.0 % with SGD 0.1.
- `val_subset: 1000`: binomial standard error ≈ 1.6 points at 1000 images (2.2 at 500), below the
  spread between samples (child 13–25 %, parent 32–60 % in the run above); the measurement costs
  2 × val_subset forward passes per sample against ≈ 2 × 3 × sample_steps × batch for training.
- `rounds: 3`, `sample_steps: 0` (one epoch per sample, the book's setting) and no warm-up follow
  the paper; the CPU recipe (`search_cpnas_fmnist_cpu`) uses T=1 and 10 steps.

One unit = one warm-up epoch, one sample, or one removal step; all state (both supernets,
optimizers, loader position, sampling generator, permutations, accumulators, history) is in
`state_dict()`, so a search killed anywhere resumes to the same genotype.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from bitnas.common.batchstats import batch_statistics, batchnorm_layers, running_statistics
from bitnas.common.checkpoint import pack_tensors, unpack_tensors
from bitnas.common.schedules import cosine_lr
from bitnas.data import BatchLoader, InfiniteLoader
from bitnas.data.loader import mix_seed
from bitnas.errors import ConfigError
from bitnas.search.config import SearchConfig
from bitnas.search.cpnas_rounds import CELLS, INDICATORS, PruningRounds, indicator, removal_choice, short_name
from bitnas.search.steps import Meter, make_weight_optimizer, weight_step
from bitnas.search.strategy import STRATEGIES, WEIGHT_KEYS, SearchContext, SearchStrategy, UnitInterrupted
from bitnas.search.supernet import SuperNetwork, derive_genotype, fit_partial_ratio, genotype_paths
from bitnas.space.edges import num_edges
from bitnas.space.genotypes import Genotype

log = logging.getLogger("bitnas")

T = TypeVar("T")
# what tests and tools import from here
__all__ = ["CELLS", "CPNASSearch", "indicator", "pack_tensors", "removal_choice", "unpack_tensors"]


class CPNASSearch(SearchStrategy):
    """Child-Parent search: sample without replacement, score by child/parent accuracy, remove the worst."""

    name = "cpnas"
    default_space = "cpnas"
    reads = WEIGHT_KEYS | {
        "rounds", "sample_steps", "beta_p", "indicator", "val_subset", "cp_warmup_epochs", "cp_warmup_mode",
        "cp_partial_channels", "cp_drop_zero_first", "cp_temperature", "cp_eval_bn", "cp_eval_batch",
        "cp_concurrent", "k_normal", "k_reduce"}

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        k_normal = k_reduce = 1
        if cfg.cp_partial_channels:
            k_normal = fit_partial_ratio(cfg.k_normal or 4, cfg.init_channels)
            k_reduce = fit_partial_ratio(cfg.k_reduce or 4, cfg.init_channels)
        self.k = (k_normal, k_reduce)
        self.child = self.build_supernet("binary", k_normal, k_reduce)
        self.parent = self.build_supernet("fp32", k_normal, k_reduce)
        self.nets: dict[str, SuperNetwork] = {"child": self.child, "parent": self.parent}
        self.params = {n: m.weight_parameters() for n, m in self.nets.items()}
        self.optimizers = {n: make_weight_optimizer(cfg, self.params[n]) for n in self.nets}
        self.train_stream = InfiniteLoader(ctx.loader("train", shuffle=True))
        self.epoch_batches = len(self.train_stream.loader)
        self.steps_per_sample = cfg.sample_steps or self.epoch_batches
        self.ops = self.child.ops
        self.zero = self.ops.index(self.space.zero_op) if self.space.zero_op in self.ops else None
        self.num_edges = num_edges(self.child.steps)
        n_ops = len(self.ops)
        self.total_samples = cfg.rounds * sum(range(2, n_ops + 1))
        self.total_steps = cfg.cp_warmup_epochs * self.epoch_batches + self.total_samples * self.steps_per_sample
        self.rounds = PruningRounds(self.ops, self.zero, self.num_edges, cfg.rounds,
                                    torch.Generator().manual_seed(mix_seed(cfg.seed, 0xC9A5)))
        self._val_batches: list[tuple[Tensor, Tensor]] | None = None
        self._val_images = 0
        concurrent = cfg.cp_concurrent and ctx.world_size == 1 and ctx.device.type == "cpu"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpnas-parent") if concurrent else None
        self._batchnorms = {n: batchnorm_layers(net) for n, net in self.nets.items()}
        self.warmup_epoch = 0
        self.units = 0
        self.partial: dict[str, Any] | None = None
        log.info("cpnas: %d ops × %d edges per cell, T=%d rounds, %d training steps per sample (batch %d), "
                 "%d samples, β_P=%g (%s indicator), val subset %d, warm-up %d epoch(s) (%s), K partial %d/%d",
                 n_ops, self.num_edges, cfg.rounds, self.steps_per_sample, cfg.batch_size, self.total_samples,
                 cfg.beta_p, cfg.indicator, self._val_size(), cfg.cp_warmup_epochs, cfg.cp_warmup_mode, *self.k)

    @classmethod
    def check_config(cls, cfg: SearchConfig) -> None:
        super().check_config(cfg)
        if cfg.rounds < 1:
            raise ConfigError(f"rounds (T) must be at least 1, got {cfg.rounds}")
        for key in ("sample_steps", "val_subset", "cp_warmup_epochs"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"{key} must be ≥ 0, got {getattr(cfg, key)}")
        if cfg.cp_eval_batch < 1:
            raise ConfigError(f"cp_eval_batch must be at least 1, got {cfg.cp_eval_batch}")
        if not cfg.cp_temperature > 0:
            raise ConfigError(f"cp_temperature must be > 0, got {cfg.cp_temperature}")
        if cfg.indicator not in INDICATORS:
            raise ConfigError(f"indicator must be one of {', '.join(INDICATORS)}, got {cfg.indicator!r}")

    @classmethod
    def precisions(cls, cfg: SearchConfig) -> tuple[str, ...]:
        return ("binary", "fp32")

    # -- progress -------------------------------------------------------------------------
    @property
    def ops_left(self) -> int:
        """K: the number of ops left on every edge."""
        return self.rounds.ops_left

    @property
    def finished(self) -> bool:
        r = self.rounds
        return self.warmup_epoch >= self.cfg.cp_warmup_epochs and not r.pending_removal and r.ops_left <= 1

    def run_unit(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.warmup_epoch < self.cfg.cp_warmup_epochs:
            rec = self._warmup_unit()
        elif self.rounds.pending_removal:
            rec = self._removal_unit()
        else:
            rec = self._sample_unit()
        self.units += 1
        rec["seconds"] = time.perf_counter() - t0
        if rec["kind"] == "sample":
            self.rounds.stats["seconds"] += rec["seconds"]
        return rec

    # -- training and measuring -----------------------------------------------------------
    def _lr(self) -> float:
        return cosine_lr(self.step, self.total_steps, self.cfg.w_lr, self.cfg.w_lr_min)

    def _both(self, fn: Callable[[str], T]) -> dict[str, T]:
        """fn("child") and fn("parent"): the parent on the second thread when `cp_concurrent` is on.

        The two supernets share nothing but the read-only batch, and every op runs on the thread
        that calls it, so the results do not depend on the interleaving."""
        if self._pool is None:
            return {n: fn(n) for n in self.nets}
        future = self._pool.submit(fn, "parent")
        try:
            child = fn("child")
        finally:
            parent = future.result()
        return {"child": child, "parent": parent}

    def _train(self, steps: int, paths: dict[str, list[int]] | None, random_paths: bool = False) -> dict[str, float]:
        """`steps` mini-batches for the child and the parent (the same batches and path)."""
        ctx = self.ctx
        if self.partial is None:
            self.partial = {"done": 0, "lr": self._lr(), "meters": {n: Meter() for n in self.nets}}
        meters: dict[str, Meter] = self.partial["meters"]
        out: dict[str, float] = {"lr": self.partial["lr"]}
        while self.partial["done"] < steps:
            x, y = next(self.train_stream)
            x, y = x.to(ctx.device), y.to(ctx.device)
            path = self.rounds.random_path() if random_paths else paths
            lr = self._lr()

            def step(name: str) -> tuple[Tensor, Tensor]:
                opt = self.optimizers[name]
                for group in opt.param_groups:
                    group["lr"] = lr
                return weight_step(ctx, self.nets[name], opt, self.params[name], x, y, self.cfg.grad_clip, path,
                                   what=f"cpnas {name}")

            for name, (loss, logits) in self._both(step).items():
                meters[name].add(loss, logits, y)
            self.partial["done"] += 1
            self.steps.done(images=len(self.nets) * y.shape[0] * ctx.world_size)
            if self.partial["done"] < steps and self.steps.stop_requested():
                raise UnitInterrupted
        self.partial = None
        for net in self.nets.values():
            ctx.broadcast_buffers(net)
        for name, m in meters.items():
            out[f"train_loss_{name}"], out[f"train_acc_{name}"] = m.result(ctx)
        return out

    def _val_size(self) -> int:
        n = len(self.ctx.val_set)
        return min(n, self.cfg.val_subset) if self.cfg.val_subset else n

    def _val(self) -> list[tuple[Tensor, Tensor]]:
        """The fixed validation subset, batched once (this rank's shard)."""
        if self._val_batches is None:
            ctx = self.ctx
            gen = torch.Generator().manual_seed(mix_seed(self.cfg.seed, 0x5A1))
            idx = torch.randperm(len(ctx.val_set), generator=gen)[: self._val_size()]
            loader = BatchLoader(ctx.val_set.subset(idx), self.cfg.cp_eval_batch, shuffle=False, seed=self.cfg.seed,
                                 rank=ctx.rank, world_size=ctx.world_size)
            self._val_batches = [(x.to(ctx.device), y.to(ctx.device)) for x, y in loader.iter_from(0)]
            self._val_images = sum(int(y.shape[0]) for _, y in self._val_batches) * ctx.world_size
        return self._val_batches

    def measure(self, which: str, paths: dict[str, list[int]] | None) -> float:
        """Top-1 accuracy (%) of the "child" or "parent" supernet on the fixed validation subset along `paths`.

        The supernets stay in train mode throughout the search; with `cp_eval_bn: batch` the
        BatchNorm layers normalise by the batch's statistics and leave their running ones alone."""
        net = self.nets[which]
        stats = (batch_statistics(net, self._batchnorms[which]) if self.cfg.cp_eval_bn == "batch"
                 else running_statistics(net))
        correct, n = 0.0, 0.0
        with stats:
            for x, y in self._val():
                logits = net(x, paths=paths)[0]
                correct += float((logits.argmax(1) == y).sum())
                n += y.shape[0]
        correct, n = self.ctx.reduce_sums([correct, n])
        return 100.0 * correct / n

    # -- units ----------------------------------------------------------------------------
    def _warmup_unit(self) -> dict[str, Any]:
        mode = self.cfg.cp_warmup_mode
        rec = {"kind": "warmup", "epoch": self.warmup_epoch, "mode": mode}
        rec.update(self._train(self.epoch_batches, None, random_paths=mode == "path"))
        log.info("cpnas warm-up epoch %d/%d (%s): child %.3f / %.2f%%, parent %.3f / %.2f%%", self.warmup_epoch + 1,
                 self.cfg.cp_warmup_epochs, mode, rec["train_loss_child"], rec["train_acc_child"],
                 rec["train_loss_parent"], rec["train_acc_parent"])
        self.warmup_epoch += 1
        return rec

    def _sample_unit(self) -> dict[str, Any]:
        cfg, r = self.cfg, self.rounds
        k, e = r.ops_left, r.sample
        paths = r.next_paths()
        rec: dict[str, Any] = {"kind": "sample", "removal_step": r.removals, "round": r.round, "sample": e,
                               "K": k, "index": r.samples_done,
                               "ops": {c: [self.ops[i] for i in paths[c]] for c in CELLS}}
        rec.update(self._train(self.steps_per_sample, paths))
        self._val()
        acc = self._both(lambda which: self.measure(which, paths))
        a_c, a_p = acc["child"], acc["parent"]
        self.steps.add_images(2 * self._val_images)
        z = indicator(a_c, a_p, cfg.beta_p, cfg.indicator)
        rec.update({"acc_child": a_c, "acc_parent": a_p, "z": z})
        log.info("cpnas sample %d/%d (step %d, round %d/%d, %d/%d): A_C %.2f%%, A_P %.2f%%, z %.2f",
                 r.samples_done + 1, self.total_samples, r.removals + 1, r.round + 1, cfg.rounds, e + 1, k,
                 a_c, a_p, z)
        r.credit(paths, z, a_c, a_p)
        return rec

    def _removal_unit(self) -> dict[str, Any]:
        rec = self.rounds.remove(self.cfg.cp_temperature, self.cfg.cp_drop_zero_first)
        edges = rec["edges"]
        removed = ", ".join(f"{c}: " + " ".join(short_name(r["removed"]) for r in edges[c]) for c in CELLS)
        log.info("cpnas removal %d: K %d → %d, mean A_C %.2f%%, A_P %.2f%%; removed %s", self.rounds.removals,
                 rec["K_before"], rec["K_after"], rec["acc_child_mean"], rec["acc_parent_mean"], removed)
        if self.finished:
            self._write_results()
        return dict(rec)

    # -- results --------------------------------------------------------------------------
    def genotype(self) -> Genotype:
        return derive_genotype(self.rounds.scores("normal"), self.rounds.scores("reduce"), self.ops, self.child.steps,
                               self.child.multiplier, self.space.zero_op)

    def estimate(self, genotype: Genotype) -> dict[str, float]:
        """The indicator z of the genotype's path (its two kept edges per node; the others left out)
        in the trained child and parent supernets, measured as the samples are."""
        paths = genotype_paths(genotype, self.ops)
        self._val()
        acc = self._both(lambda which: self.measure(which, paths))
        z = indicator(acc["child"], acc["parent"], self.cfg.beta_p, self.cfg.indicator)
        return {"score": z, "acc_child": acc["child"], "acc_parent": acc["parent"]}

    def survivors(self) -> dict[str, list[list[str]]]:
        """The ops still left on every edge."""
        return self.rounds.survivors()

    def history_dict(self) -> dict[str, Any]:
        """Everything the removal steps decided, for cpnas_history.json and `plot_cpnas_scores`."""
        return {
            "strategy": self.name, "space": self.space.name, "ops": list(self.ops),
            "settings": self.settings(), "removals": self.rounds.history,
            "survivors": self.survivors(), "genotype": self.genotype().to_dict(), "samples": self.rounds.samples_done,
            "scores": {c: self.rounds.scores(c).tolist() for c in CELLS},
        }

    def settings(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"rounds": cfg.rounds, "sample_steps": cfg.sample_steps, "steps_per_sample": self.steps_per_sample,
                "batch_size": cfg.batch_size, "beta_p": cfg.beta_p, "indicator": cfg.indicator,
                "val_subset": self._val_size(), "warmup_epochs": cfg.cp_warmup_epochs,
                "warmup_mode": cfg.cp_warmup_mode, "partial_channels": list(self.k),
                "drop_zero_first": cfg.cp_drop_zero_first, "temperature": cfg.cp_temperature,
                "eval_bn": cfg.cp_eval_bn, "w_optimizer": cfg.w_optimizer, "w_lr": cfg.w_lr,
                "concurrent": self._pool is not None,
                "total_samples": self.total_samples, "total_steps": self.total_steps}

    def _write_results(self) -> None:
        if self.ctx.rank != 0:
            return
        hist = self.history_dict()
        self.ctx.run.write_json("cpnas_history.json", hist)
        from bitnas.plots_cpnas import plot_cpnas_scores

        plot_cpnas_scores(hist, self.ctx.run.file("plots") / "cpnas_scores.png")

    def result_info(self) -> dict[str, Any]:
        r = self.rounds
        return {"samples": r.samples_done, "removal_steps": r.removals, "survivors": self.survivors(),
                "settings": self.settings(), "history": r.history, "history_file": "cpnas_history.json"}

    def models(self) -> dict[str, nn.Module]:
        return {"child": self.child, "parent": self.parent}

    # -- exact resume ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        st = super().state_dict()
        st.update({
            "weights": pack_tensors({
                "nets": {n: net.state_dict() for n, net in self.nets.items()},
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}}),
            "train_stream": self.train_stream.state_dict(), "generator": self.rounds.gen.get_state(),
            **self.rounds.state_dict(), "warmup_epoch": self.warmup_epoch, "units": self.units,
            "partial": None if self.partial is None else {
                "done": self.partial["done"], "lr": self.partial["lr"],
                "meters": {n: m.state_dict() for n, m in self.partial["meters"].items()}},
        })
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        weights = unpack_tensors(state["weights"])
        for n, net in self.nets.items():
            net.load_state_dict(weights["nets"][n])
            self.optimizers[n].load_state_dict(weights["optimizers"][n])
        self.train_stream.load_state_dict(state["train_stream"])
        self.rounds.gen.set_state(state["generator"])
        self.rounds.load_state_dict(state)
        self.warmup_epoch = int(state["warmup_epoch"])
        self.units = int(state["units"])
        partial = state.get("partial")
        self.partial = None if not partial else {
            "done": int(partial["done"]), "lr": float(partial["lr"]),
            "meters": {n: Meter.from_state(m) for n, m in partial["meters"].items()}}



STRATEGIES.register("cpnas", CPNASSearch, aliases=("cp-nas", "cp_nas"))
