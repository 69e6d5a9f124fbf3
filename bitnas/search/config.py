"""SearchConfig: every option of `bitnas search` (all strategies), with the sources' defaults."""
from __future__ import annotations

from dataclasses import dataclass

from bitnas.config import BaseConfig, opt, refuse_failed


@dataclass
class SearchConfig(BaseConfig):
    strategy: str = opt("cpnas", "search strategy: cpnas, ubnas, pcdarts, darts, random, zero_cost", flag=True)
    space: str = opt("", "search space: darts, cpnas, ubnas, ubnas_nozero (empty = the strategy's default)", flag=True)
    epochs: int = opt(50, "search epochs (differentiable and random strategies)", flag=True)
    val_fraction: float = opt(0.5, "fraction of the training set held out to update α / score candidates")
    # weights (DARTS §4.2)
    w_optimizer: str = opt("sgd", "optimizer of supernet weights: sgd or adam", choices=("sgd", "adam"))
    w_lr: float = opt(0.025, "weight learning rate (cosine to w_lr_min)")
    w_lr_min: float = opt(0.001, "final weight learning rate")
    w_momentum: float = opt(0.9, "SGD momentum of weights")
    w_weight_decay: float = opt(3e-4, "weight decay of weights")
    grad_clip: float = opt(5.0, "gradient norm clip of weights (0 = off)")
    # architecture (α, β)
    arch_lr: float = opt(0.0, "Adam learning rate of α/β (0 = strategy default: 3e-4 darts, 6e-4 pcdarts/ubnas)")
    arch_beta1: float = opt(0.5, "Adam β1 of α/β")
    arch_beta2: float = opt(0.999, "Adam β2 of α/β")
    arch_weight_decay: float = opt(1e-3, "weight decay of α/β")
    unrolled: bool = opt(False, "second-order DARTS (virtual step + finite-difference Hessian-vector product)", flag=True)
    k_normal: int = opt(0, "partial-channel ratio K in normal cells (0 = strategy default: 1 darts, 4 pcdarts, 8 ubnas)")
    k_reduce: int = opt(0, "partial-channel ratio K in reduction cells (0 = strategy default: 1 darts, 4 pcdarts/ubnas)")
    edge_norm: str = opt("auto", "edge normalisation β: auto (strategy default), on, off", choices=("auto", "on", "off"))
    warmup_epochs: int = opt(-1, "epochs without α updates (-1 = strategy default: 0 darts, 30% of epochs pcdarts/ubnas)")
    # early stopping (UBNAS, METHODS §4.3)
    early_stop: str = opt("auto", "early stopping: auto (ubnas: genotype, else none), none, skip, stable, genotype, any",
                          choices=("auto", "none", "skip", "stable", "genotype", "any"))
    early_stop_skips: int = opt(2, "stop when a normal cell holds at least this many skip connections (DARTS+)")
    early_stop_patience: int = opt(3, "stop when the α ranking / genotype has not changed for this many epochs")
    early_stop_min_epochs: int = opt(0, "never stop before this many epochs (after warm-up)")
    early_stop_tolerance: int = opt(0, "genotype criterion: edges (of both cells) by which the genotype may differ from "
                                    "each of the last `early_stop_patience` epochs' and still count as unchanged")
    # collapse remedies of the differentiable strategies (collapse.py; defaults = no remedy)
    max_param_free_ops: int = opt(-1, "cap on parameter-free ops (skip, pooling) per derived cell: the weakest-margin "
                                  "ones take their edge's strongest parametric op (P-DARTS/DARTS+; -1 = no cap)")
    alpha_temperature: float = opt(1.0, "temperature T0 of the op softmax, softmax(α/T), at the first step (BATS)")
    alpha_temperature_end: float = opt(0.0, "temperature T1 at the last step of the search (0 = T0: constant)")
    alpha_temperature_schedule: str = opt("exponential", "T from T0 to T1 over the search's steps: exponential "
                                          "T0·(T1/T0)^p or linear T0 + (T1 − T0)·p, p = step / (steps − 1)",
                                          choices=("exponential", "linear"))
    # random search
    random_samples: int = opt(8, "random: genotypes drawn and scored with the shared weights")
    # zero-cost search
    zero_cost_samples: int = opt(100, "zero_cost: genotypes drawn and scored at initialisation")
    zero_cost_estimator: str = opt("synflow", "zero_cost: the estimator that ranks them: params, synflow, grad_norm, "
                                   "naswot, zico (bitnas.study.estimators.zero_cost)")
    zero_cost_batches: int = opt(2, "zero_cost: training batches the estimators may read (zico needs 2)")
    # CP-NAS (METHODS §4.4)
    rounds: int = opt(3, "CP-NAS: T, sampling rounds between two removals", flag=True)
    sample_steps: int = opt(0, "CP-NAS: training steps each sampled path gets (0 = one epoch, as the paper)", flag=True)
    beta_p: float = opt(0.5, "CP-NAS: β_P weight of the parent-child accuracy gap in the indicator")
    indicator: str = opt("printed", "CP-NAS indicator: printed z = β_P(A_P − A_C) + A_C, or flipped z = A_C − β_P(A_P − A_C)",
                         choices=("printed", "flipped"))
    val_subset: int = opt(1000, "CP-NAS: validation images used to measure A_C and A_P per sample (0 = all)")
    cp_warmup_epochs: int = opt(0, "CP-NAS: PC-DARTS-style warm-up epochs of both supernets before sampling")
    cp_warmup_mode: str = opt("path", "CP-NAS warm-up: path (a uniformly random single path per batch) or mixed "
                              "(the softmax mixed op of every edge, α frozen, as PC-DARTS' warm-up)",
                              choices=("path", "mixed"))
    cp_partial_channels: bool = opt(False, "CP-NAS: build both supernets with PC-DARTS partial channels (k_normal/"
                                    "k_reduce, 0 = 4): every sampled op sees C/K channels — faster, less faithful")
    cp_drop_zero_first: bool = opt(False, "CP-NAS: remove the zero op from every edge at the first removal step; "
                                   "otherwise it competes like any op and is only kept from surviving alone")
    cp_temperature: float = opt(1.0, "CP-NAS: softmax temperature of e(·) = softmax(z̄ / τ), z in accuracy points (%)")
    cp_eval_bn: str = opt("batch", "CP-NAS: BatchNorm statistics when measuring A_C, A_P: batch (the evaluation "
                          "batch's own, running stats untouched) or running (eval mode)", choices=("batch", "running"))
    cp_eval_batch: int = opt(250, "CP-NAS: batch size of the A_C / A_P measurement")
    cp_concurrent: bool = opt(True, "CP-NAS: train and measure the child and the parent at the same time on two threads "
                              "(CPU, one process; the results are bitwise the same either way)")
    # supernet execution
    channels_last: str = opt("auto", "channels-last activations in the supernet: auto (on for CPU and CUDA), on, off",
                             choices=("auto", "on", "off"))
    amp: str = opt("none", "mixed precision of the weight steps' forward and loss: none (float32) or bf16 (autocast; "
                   "weights, α and gradients stay float32, α steps run in float32; fp16 needs a loss scaler, "
                   "which only `bitnas train` has)", choices=("none", "bf16"))
    threads: int = opt(0, "torch intra-op CPU threads (0 = auto: 1 — the supernet runs thousands of small kernels, "
                          "where 1 thread per process is fastest on a shared CPU and reproducible across machines; "
                          "use torchrun for more processes)")
    arch_fd_scale: float = opt(0.01, "unrolled: ε = arch_fd_scale / ‖∇w' L_val‖ of the finite-difference Hessian-vector "
                               "product (DARTS: 0.01)")

    def validate(self) -> "SearchConfig":
        """Refuse values of the keys every strategy shares, naming the key; return self. Each strategy
        checks its own keys (`SearchStrategy.check_config`)."""
        self.check_common()
        checks = [
            (0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)"),
            (self.w_lr > 0, "w_lr", "must be positive"),
            (self.w_lr_min >= 0, "w_lr_min", "must be >= 0"),
            (self.w_momentum >= 0, "w_momentum", "must be >= 0"),
            (self.w_weight_decay >= 0, "w_weight_decay", "must be >= 0"),
            (self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)"),
            (self.arch_lr >= 0, "arch_lr", "must be >= 0 (0 = the strategy's default)"),
            (0 <= self.arch_beta1 < 1 and 0 <= self.arch_beta2 < 1, "arch_beta1/arch_beta2", "must be in [0, 1)"),
            (self.arch_weight_decay >= 0, "arch_weight_decay", "must be >= 0"),
            (self.arch_fd_scale > 0, "arch_fd_scale", "must be positive"),
            (self.k_normal >= 0 and self.k_reduce >= 0, "k_normal/k_reduce", "must be >= 0 (0 = the strategy's default)"),
            (self.warmup_epochs >= -1, "warmup_epochs", "must be >= 0, or -1 for the strategy's default"),
            (self.early_stop_skips >= 1, "early_stop_skips", "must be at least 1"),
            (self.early_stop_patience >= 1, "early_stop_patience", "must be at least 1"),
            (self.early_stop_min_epochs >= 0, "early_stop_min_epochs", "must be >= 0"),
            (self.early_stop_tolerance >= 0, "early_stop_tolerance", "must be >= 0 (0 = identical genotypes)"),
            (self.max_param_free_ops >= -1, "max_param_free_ops", "must be >= 0, or -1 for no cap"),
            (self.alpha_temperature > 0, "alpha_temperature", "must be positive"),
            (self.alpha_temperature_end >= 0, "alpha_temperature_end", "must be positive, or 0 for a constant T0"),
            (self.threads >= 0, "threads", "must be >= 0 (0 = auto)"),
        ]
        refuse_failed(self, checks)
        return self
