"""Detection data: YOLO-format and COCO-JSON readers, label checks, and the letterbox every stage shares."""

from edgekd.data.detection.dataset import DetectionSet, ImageLabels, LabelIssue, load_detection_set
from edgekd.data.detection.letterbox import Letterbox, letterbox

__all__ = ["DetectionSet", "ImageLabels", "LabelIssue", "Letterbox", "letterbox", "load_detection_set"]
