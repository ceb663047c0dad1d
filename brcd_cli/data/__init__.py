"""Image collections, splits and augmentation."""
from .augment import Augmenter, iter_batches, load_batch, preload, to_tensor
from .sources import ImageSource, digits_source, open_source, synthetic_source
from .splits import Split, make_split

__all__ = [
    "Augmenter",
    "ImageSource",
    "Split",
    "digits_source",
    "iter_batches",
    "load_batch",
    "make_split",
    "open_source",
    "preload",
    "synthetic_source",
    "to_tensor",
]
