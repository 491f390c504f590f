"""COCO 2017's 80 detection categories: the names in the order of the models' class indices (the
order of the category ids, as MMDetection's ``CocoDataset.METAINFO`` and torchvision list them)
and the category ids COCO's annotation and results files use (1..90 with gaps)."""
from __future__ import annotations

__all__ = ["COCO_NAMES", "COCO_CATEGORY_IDS"]

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# Category id of each class index: ids 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are unused in 2017.
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

assert len(COCO_NAMES) == len(COCO_CATEGORY_IDS) == 80
