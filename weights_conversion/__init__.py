"""Offline converters from PyTorch checkpoints to nad-jax params checkpoints.

``torch_utils`` holds the shared pieces (loading a ``.pth``, layout
transforms, a strict key/shape checker); ``convert_torchvision`` converts
every torchvision VGG, ResNet (ResNeXt, Wide ResNet) and DenseNet, and hands
``--arch efficientnet_lite0`` to ``convert_efficientnet`` (EfficientNet-PyTorch
keys). torch is imported only in this package (and in tests); nothing here
downloads anything.
"""
