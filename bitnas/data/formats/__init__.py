"""On-disk dataset formats, one module each: IDX, the embedded subset, CIFAR pickles, image folders."""
