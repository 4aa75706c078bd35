"""Built-in torchvision architectures as layer graphs, any input size.

``resnet18``, ``resnet34``, ``resnet50`` (v1.5: stride in the 3×3 convolution), ``vgg16``
and ``alexnet``, with torchvision's module names (``conv1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``features.0``, ``classifier.6``, ...). Batch norms are folded
into the preceding convolution (``Node.attrs["bn"]`` keeps the batch norm's name). A module
used more than once (torchvision's shared ``relu`` in a ResNet block) gets ``:1``, ``:2``
suffixes on its later uses; the residual add, which has no module, is ``layerN.i.add``
and ``torch.flatten`` is ``flatten``. Dropout is the identity at inference and is left out.
"""

from __future__ import annotations

from collections.abc import Callable

from .graph import Graph


def _image(image) -> tuple[int, int]:
    h, w = (image, image) if isinstance(image, int) else image
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"image size must be positive, got {image!r}")
    return int(h), int(w)


def _resnet(name: str, blocks: list[int], bottleneck: bool, image, num_classes: int) -> Graph:
    g = Graph(name)
    x = g.input("x", (3, *_image(image)))
    x = g.relu("relu", g.conv("conv1", x, 64, 7, 2, 3, bn="bn1"))
    x = g.maxpool("maxpool", x, 3, 2, 1)
    inplanes, expansion = 64, (4 if bottleneck else 1)
    for stage, nblocks in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        for i in range(nblocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            p = f"layer{stage}.{i}."
            if bottleneck:
                y = g.relu(p + "relu", g.conv(p + "conv1", x, planes, 1, bn=p + "bn1"))
                y = g.relu(p + "relu:1", g.conv(p + "conv2", y, planes, 3, stride, 1,
                                                bn=p + "bn2"))
                y = g.conv(p + "conv3", y, planes * 4, 1, bn=p + "bn3")
            else:
                y = g.relu(p + "relu", g.conv(p + "conv1", x, planes, 3, stride, 1,
                                              bn=p + "bn1"))
                y = g.conv(p + "conv2", y, planes, 3, 1, 1, bn=p + "bn2")
            idn = x
            if stride != 1 or inplanes != planes * expansion:
                idn = g.conv(p + "downsample.0", x, planes * expansion, 1, stride,
                             bn=p + "downsample.1")
            last = "relu:2" if bottleneck else "relu:1"
            x = g.relu(p + last, g.add(p + "add", y, idn))
            inplanes = planes * expansion
    x = g.flatten("flatten", g.global_avgpool("avgpool", x))
    g.fc("fc", x, num_classes)
    return g


def resnet18(image=224, num_classes: int = 1000) -> Graph:
    """torchvision ``resnet18`` (11,689,512 parameters at 1000 classes)."""
    return _resnet("resnet18", [2, 2, 2, 2], False, image, num_classes)


def resnet34(image=224, num_classes: int = 1000) -> Graph:
    """torchvision ``resnet34`` (21,797,672 parameters)."""
    return _resnet("resnet34", [3, 4, 6, 3], False, image, num_classes)


def resnet50(image=224, num_classes: int = 1000) -> Graph:
    """torchvision ``resnet50`` (25,557,032 parameters)."""
    return _resnet("resnet50", [3, 4, 6, 3], True, image, num_classes)


def vgg16(image=224, num_classes: int = 1000) -> Graph:
    """torchvision ``vgg16`` without batch norm (138,357,544 parameters)."""
    g = Graph("vgg16")
    x = g.input("x", (3, *_image(image)))
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    idx = 0
    for v in cfg:
        if v == "M":
            x = g.maxpool(f"features.{idx}", x, 2, 2)
            idx += 1
        else:
            x = g.relu(f"features.{idx + 1}", g.conv(f"features.{idx}", x, v, 3, 1, 1, bias=True))
            idx += 2
    x = g.flatten("flatten", g.adaptive_avgpool("avgpool", x, (7, 7)))
    x = g.relu("classifier.1", g.fc("classifier.0", x, 4096))
    x = g.relu("classifier.4", g.fc("classifier.3", x, 4096))
    g.fc("classifier.6", x, num_classes)
    return g


def alexnet(image=224, num_classes: int = 1000) -> Graph:
    """torchvision ``alexnet`` (61,100,840 parameters)."""
    g = Graph("alexnet")
    x = g.input("x", (3, *_image(image)))
    x = g.relu("features.1", g.conv("features.0", x, 64, 11, 4, 2, bias=True))
    x = g.maxpool("features.2", x, 3, 2)
    x = g.relu("features.4", g.conv("features.3", x, 192, 5, 1, 2, bias=True))
    x = g.maxpool("features.5", x, 3, 2)
    x = g.relu("features.7", g.conv("features.6", x, 384, 3, 1, 1, bias=True))
    x = g.relu("features.9", g.conv("features.8", x, 256, 3, 1, 1, bias=True))
    x = g.relu("features.11", g.conv("features.10", x, 256, 3, 1, 1, bias=True))
    x = g.maxpool("features.12", x, 3, 2)
    x = g.flatten("flatten", g.adaptive_avgpool("avgpool", x, (6, 6)))
    x = g.relu("classifier.2", g.fc("classifier.1", x, 4096))
    x = g.relu("classifier.5", g.fc("classifier.4", x, 4096))
    g.fc("classifier.6", x, num_classes)
    return g


#: Built-in models by name.
MODELS: dict[str, Callable[..., Graph]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "vgg16": vgg16, "alexnet": alexnet,
}


def build(name: str, image=224, num_classes: int = 1000) -> Graph:
    """A built-in model by name at input size ``image`` (an int or ``(H, W)``).

    Raises
    ------
    ValueError
        For an unknown name, or an image too small for the architecture (naming the layer).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in: {', '.join(MODELS)}")
    return MODELS[name](image, num_classes)
