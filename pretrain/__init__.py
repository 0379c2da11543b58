"""openwsl pretraining: ResNeXt + multi-label softmax under torchrun DDP (may import ``data``)."""
