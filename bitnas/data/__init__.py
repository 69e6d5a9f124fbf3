"""Datasets, augmentation and in-memory batch loading for bitnas."""
from bitnas.data.augment import Augment
from bitnas.data.datasets import (
    DATASETS, ImageDataset, check_training_split, load_dataset, take_subset, train_val_split,
)
from bitnas.data.loader import BatchLoader, InfiniteLoader

__all__ = [
    "ImageDataset",
    "check_training_split",
    "load_dataset",
    "train_val_split",
    "take_subset",
    "Augment",
    "BatchLoader",
    "InfiniteLoader",
    "DATASETS",
]
