"""Datasets, augmentation and batch loading for bitnas (formats in data/formats/)."""
from bitnas.data.augment import Augment
from bitnas.data.checks import check_training_split
from bitnas.data.datasets import DATASETS, load_dataset
from bitnas.data.imagedata import ImageDataset
from bitnas.data.loader import BatchLoader, InfiniteLoader
from bitnas.data.splits import take_subset, train_val_split

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
