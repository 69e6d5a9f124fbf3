"""TrainConfig: every option of `bitnas train` (recipe → flags → key=value overrides).

Defaults are the CPU-scale Fashion-MNIST setting (see recipes/train_fashion_mnist_cpu.yaml
and README for how they were measured); the paper recipes live in recipes/train_*.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass

from bitnas.common.amp import AMP_CHOICES
from bitnas.config import BaseConfig, opt, refuse_failed
from bitnas.errors import ConfigError


@dataclass
class TrainConfig(BaseConfig):
    """Training a fixed genotype from scratch: the 1-bit child, its fp32 parent, or both."""

    genotype: str = opt("DARTS_V2", "registered genotype name, genotype JSON file, or pasted Genotype(...) text", flag=True)
    network: str = opt("", "train a hand-designed binary network instead of a genotype's: bireal or reactnet "
                       "(bitnas.nets.blocks; same stem, cells, reductions and classifier)", flag=True)
    epochs: int = opt(10, "training epochs (both stages together when two_stage)", flag=True)
    init_channels: int = opt(8, "initial channels C", flag=True)
    layers: int = opt(5, "number of cells", flag=True)
    batch_size: int = opt(64, "mini-batch size (per process)", flag=True)
    test_subset: int = opt(0, "evaluate on only N test images (class-balanced; 0 = all) — for quick runs")
    image_size: int = opt(0, "resize imagefolder images to this side (0 = the dataset's own size)")
    optimizer: str = opt("adam", "sgd (momentum, nesterov off) or adam", choices=("sgd", "adam"))
    lr: float = opt(1e-3, "initial learning rate")
    lr_min: float = opt(0.0, "final learning rate of the schedule")
    scheduler: str = opt("cosine", "learning-rate schedule per step: cosine, linear (to lr_min) or constant",
                         choices=("cosine", "linear", "constant"))
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.0, "weight decay of full-precision parameters (all parameters of an fp32 net)")
    binary_weight_decay: float = opt(0.0, "weight decay of the latent weights of binarised convs (binary practice: 0)")
    grad_clip: float = opt(5.0, "clip the gradient norm to this value (0 = off)")
    auxiliary: bool = opt(False, "auxiliary head after cell 2L/3 (DARTS)")
    auxiliary_weight: float = opt(0.4, "weight of the auxiliary head's loss")
    drop_path_prob: float = opt(0.0, "drop-path probability, ramped linearly from 0 over the epochs (DARTS)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")
    crop_padding: int = opt(0, "random crop after zero padding by this many pixels (0 = off)")
    hflip: bool = opt(False, "random horizontal flips")
    cutout: int = opt(0, "cutout square side (0 = off)")
    stream: str = opt("auto", "image folders: decode per batch in worker processes (on) or once into memory (off); "
                      "auto streams when the decoded training images exceed 2 GiB or a streaming-only option "
                      "(random_resized_crop, color_jitter, hue_jitter, lighting, eval_crop, class_subset) is set",
                      choices=("auto", "on", "off"))
    prefetch_factor: int = opt(2, "batches each streaming worker decodes ahead (num_workers > 0)")
    persistent_workers: bool = opt(True, "keep streaming workers alive between epochs (num_workers > 0)")
    pin_memory: bool = opt(True, "page-locked streamed batches for faster copies to the GPU (CUDA only)")
    bad_images: str = opt("stop", "an unreadable image file while streaming: stop (error naming it) or skip "
                          "(left out of its batch, logged with its path, counted)", choices=("stop", "skip"))
    class_subset: str = opt("", "streamed image folders: train on these classes only: N (the first N by name) or "
                            "NAME,NAME,… (other class folders are never read; '' = all)")
    random_resized_crop: float = opt(0.0, "streamed: random-resized crop covering this minimum area fraction up to "
                                     "all of the image, aspect 3/4..4/3 (0.08 = ImageNet; 0 = off)")
    color_jitter: float = opt(0.0, "streamed: brightness/contrast/saturation jitter strength "
                              "(0.4 = DARTS ImageNet; 0 = off)")
    hue_jitter: float = opt(0.0, "streamed: hue shift of up to this fraction of a turn (0.2 = DARTS ImageNet; 0 = off)")
    lighting: float = opt(0.0, "streamed: AlexNet PCA lighting noise std (0.1 = DARTS ImageNet; 0 = off)")
    eval_crop: float = opt(0.0, "streamed: evaluation resizes the shorter side to image_size/eval_crop and takes the "
                           "centre crop (0.875 = 256 -> 224); 0 = the whole image resized to image_size")
    val_fraction: float = opt(0.1, "stratified fraction of the training images held out as the validation split; best.pt "
                              "is the epoch of best validation top-1 (0 = no validation split: nothing is selected, "
                              "best.pt is the last epoch). The test split never selects anything")
    test_eval: str = opt("final", "when the test split is evaluated: final (once, after training, on the selected "
                         "checkpoint) or every (also at every evaluation, for monitoring only)",
                         choices=("final", "every"))
    method: str = opt("plain", "plain: cross-entropy only; cp: kernel-level Child-Parent loss (CP-NAS) with the fp32 parent",
                      choices=("plain", "cp"))
    cp_lambda: float = opt(1.0, "weight of the kernel loss Σ_layers MSE(H, Ĥ) (method cp)")
    cp_mu: float = opt(1e-3, "weight of the centre loss on the last pooled features (method cp)")
    cp_kernel_target: str = opt("parent", "H of the kernel loss: the parent's fp32 kernel (parent) or the child's own latent kernel (latent)",
                                choices=("parent", "latent"))
    cp_center_alpha: float = opt(0.5, "moving-average rate of the class centres of the centre loss")
    init_from_parent: bool = opt(False, "initialise the child with the trained parent's weights (trains or loads a parent)")
    parent_checkpoint: str = opt("", "use this trained fp32 parent checkpoint instead of training one")
    parent_epochs: int = opt(0, "epochs of the parent's training (0 = same as epochs)")
    kd_weight: float = opt(0.0, "weight of distillation from the parent's logits: KL(p_T ∥ q_T)·T² (0 = off)")
    kd_temperature: float = opt(4.0, "distillation temperature T")
    two_stage: bool = opt(False, "stage 1: binary activations with real weights; stage 2: fully binary from stage 1")
    stage1_fraction: float = opt(0.5, "fraction of the epochs spent in stage 1 (two_stage)")
    threads: int = opt(0, "torch intra-op CPU threads (0 = torch's default; torchrun sets 1 per process)")
    channels_last: str = opt("auto", "channels-last activations in the cells: auto (on for CPU and CUDA), on, off",
                             choices=("auto", "on", "off"))
    amp: str = opt("none", "mixed precision of forward and loss: none (float32), bf16 (autocast) or fp16 (autocast and "
                   "a loss scaler); weights, optimizer and gradients stay float32 (bitnas.common.amp)",
                   choices=AMP_CHOICES)
    cudnn_benchmark: bool = opt(False, "CUDA: let cuDNN time its convolution algorithms and keep the fastest "
                                "(faster for fixed shapes, not bitwise reproducible); ignored on CPU")
    sync_every: int = opt(0, "steps between the host's reads of the step's loss, accuracy and finiteness check (0 = "
                          "auto: 1 on CPU, 50 on CUDA, so the GPU never waits; results are the same either way)")
    resume: bool = opt(False, "continue exactly from <out>/last.pt (and the parent's own last.pt)", flag=True)
    eval_every: int = opt(1, "evaluate the validation split every N epochs and after the last (0 = only after the last)")

    def validate(self) -> "TrainConfig":
        """Refuse values that would fail later, with the key named; return self."""
        self.check_common()
        checks = [
            (self.epochs >= 1, "epochs", "must be at least 1"),
            (self.lr > 0, "lr", "must be positive"),
            (self.lr_min >= 0, "lr_min", "must be >= 0"),
            (self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)"),
            (0.0 <= self.drop_path_prob < 1.0, "drop_path_prob", "must be in [0, 1)"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction", "must be in [0, 1)"),
            (self.kd_weight >= 0, "kd_weight", "must be >= 0"),
            (self.kd_temperature > 0, "kd_temperature", "must be positive"),
            (self.cp_lambda >= 0 and self.cp_mu >= 0, "cp_lambda/cp_mu", "must be >= 0"),
            (0.0 < self.cp_center_alpha <= 1.0, "cp_center_alpha", "must be in (0, 1]"),
            (0.0 < self.stage1_fraction < 1.0, "stage1_fraction", "must be in (0, 1)"),
            (self.parent_epochs >= 0, "parent_epochs", "must be >= 0"),
            (self.eval_every >= 0, "eval_every", "must be >= 0"),
            (self.test_subset >= 0, "test_subset", "must be >= 0"),
            (self.image_size >= 0, "image_size", "must be >= 0"),
            (self.threads >= 0, "threads", "must be >= 0"),
            (self.sync_every >= 0, "sync_every", "must be >= 0 (0 = auto)"),
            (self.prefetch_factor >= 1, "prefetch_factor", "must be at least 1"),
            (0.0 <= self.random_resized_crop < 1.0, "random_resized_crop", "must be in [0, 1)"),
            (0.0 <= self.color_jitter <= 1.0, "color_jitter", "must be in [0, 1]"),
            (0.0 <= self.hue_jitter <= 0.5, "hue_jitter", "must be in [0, 0.5]"),
            (self.lighting >= 0, "lighting", "must be >= 0"),
            (0.0 <= self.eval_crop <= 1.0, "eval_crop", "must be in [0, 1] (0 = off)"),
        ]
        refuse_failed(self, checks)
        if self.network:
            from bitnas.nets.blocks import BLOCKS

            BLOCKS.canonical(self.network)
            if self.auxiliary or self.style != "cifar":
                raise ConfigError(f"network {self.network}: hand-designed networks come in the cifar style "
                                  "without an auxiliary head")
        if self.two_stage and self.precision != "binary":
            raise ConfigError("two_stage: only a binary network has stages (precision is fp32)")
        if self.two_stage and self.epochs < 2:
            raise ConfigError("two_stage: needs at least 2 epochs (one per stage)")
        if self.method == "cp" and self.precision != "binary":
            raise ConfigError("method cp: the Child-Parent loss trains a binary child (precision is fp32)")
        if self.needs_parent and self.precision != "binary":
            raise ConfigError("method cp / kd_weight / init_from_parent: the child must be binary (precision is fp32, it is itself a parent)")
        return self

    @property
    def needs_parent(self) -> bool:
        """True when training uses a full-precision parent (CP kernel loss with H = parent, KD or init)."""
        cp_parent = self.method == "cp" and self.cp_kernel_target == "parent"
        return cp_parent or self.kd_weight > 0 or self.init_from_parent

    @property
    def stage1_epochs(self) -> int:
        """Epochs of stage 1 (0 without two_stage); each stage gets at least one epoch."""
        if not self.two_stage:
            return 0
        return min(max(1, round(self.epochs * self.stage1_fraction)), self.epochs - 1)
