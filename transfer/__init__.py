"""openwsl transfer: fine-tuning, linear probe and evaluation (may import ``data`` and ``pretrain``)."""
