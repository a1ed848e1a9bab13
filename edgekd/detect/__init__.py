"""Detection: label assignment and loss for training, NMS and post-processing, mAP evaluation."""
