"""Image collections, splits and augmentation."""
from .augment import Augmenter, iter_batches, load_batch, load_batch_tolerant, preload, to_tensor
from .photos import photos_source
from .sources import (ImageSource, decode_image, digits_source, open_source, read_image_file, split_list_line,
                      synthetic_source)
from .splits import Split, make_split

__all__ = [
    "Augmenter",
    "ImageSource",
    "Split",
    "digits_source",
    "iter_batches",
    "load_batch",
    "load_batch_tolerant",
    "make_split",
    "open_source",
    "photos_source",
    "preload",
    "read_image_file",
    "decode_image",
    "split_list_line",
    "synthetic_source",
    "to_tensor",
]
