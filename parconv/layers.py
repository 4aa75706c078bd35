"""Built-in layer suites from published architectures (torchvision module names).

Every convolution of ResNet-50, ResNet-18, VGG-16 and AlexNet at 224×224 input, named as
``torchvision.models`` names the module, e.g. ``resnet50/layer3.0.conv2``. The batch
size and precision are parameters.
"""

from __future__ import annotations

from .dtypes import PRESETS, Precision
from .spec import ConvSpec

# (name, C, K, in_hw, kernel, stride, padding)
_Layer = tuple[str, int, int, int, int, int, int]


def _resnet(blocks: list[int], bottleneck: bool) -> list[_Layer]:
    layers: list[_Layer] = [("conv1", 3, 64, 224, 7, 2, 3)]
    inplanes, size = 64, 56
    for stage, nblocks in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        out_planes = planes * (4 if bottleneck else 1)
        for i in range(nblocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            p = f"layer{stage}.{i}."
            if bottleneck:
                layers.append((p + "conv1", inplanes, planes, size, 1, 1, 0))
                layers.append((p + "conv2", planes, planes, size, 3, stride, 1))
                out_size = size // stride
                layers.append((p + "conv3", planes, out_planes, out_size, 1, 1, 0))
            else:
                layers.append((p + "conv1", inplanes, planes, size, 3, stride, 1))
                out_size = size // stride
                layers.append((p + "conv2", planes, planes, out_size, 3, 1, 1))
            if i == 0 and (stride != 1 or inplanes != out_planes):
                layers.append((p + "downsample.0", inplanes, out_planes, size, 1, stride, 0))
            inplanes, size = out_planes, out_size
    return layers


def _vgg16() -> list[_Layer]:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[_Layer] = []
    idx, c, size = 0, 3, 224
    for v in cfg:
        if v == "M":
            size //= 2
            idx += 1
        else:
            layers.append((f"features.{idx}", c, v, size, 3, 1, 1))
            c = v
            idx += 2  # conv + ReLU
    return layers


def _alexnet() -> list[_Layer]:
    return [
        ("features.0", 3, 64, 224, 11, 4, 2),
        ("features.3", 64, 192, 27, 5, 1, 2),
        ("features.6", 192, 384, 13, 3, 1, 1),
        ("features.8", 384, 256, 13, 3, 1, 1),
        ("features.10", 256, 256, 13, 3, 1, 1),
    ]


SUITES: dict[str, list[_Layer]] = {
    "resnet50": _resnet([3, 4, 6, 3], bottleneck=True),
    "resnet18": _resnet([2, 2, 2, 2], bottleneck=False),
    "vgg16": _vgg16(),
    "alexnet": _alexnet(),
}


def _make(suite: str, layer: _Layer, batch: int, precision: Precision) -> ConvSpec:
    name, c, k, hw, ker, stride, pad = layer
    return ConvSpec(batch, c, k, (hw, hw), (ker, ker), (stride, stride), (pad, pad), (1, 1),
                    precision, f"{suite}/{name}")


def suite(name: str, batch: int = 1, precision: Precision | None = None,
          unique: bool = False) -> list[ConvSpec]:
    """All convolutions of a network, in forward order.

    Parameters
    ----------
    name : one of :data:`SUITES`.
    batch : batch size.
    precision : element types (default fp32).
    unique : keep only the first layer of each distinct shape.

    Raises
    ------
    ValueError
        For an unknown suite name.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    precision = precision or PRESETS["fp32"]
    specs = [_make(name, layer, batch, precision) for layer in SUITES[name]]
    if unique:
        seen, kept = set(), []
        for s in specs:
            key = (s.C, s.K, s.in_size, s.kernel, s.stride, s.padding)
            if key not in seen:
                seen.add(key)
                kept.append(s)
        specs = kept
    return specs


def layer(name: str, batch: int = 1, precision: Precision | None = None) -> ConvSpec:
    """One layer by its full name, e.g. ``resnet50/layer3.0.conv2``.

    Raises
    ------
    ValueError
        Naming the unknown suite or layer and listing a few valid names.
    """
    suite_name, sep, module = name.partition("/")
    if not sep or suite_name not in SUITES:
        raise ValueError(f"unknown layer {name!r}: expected SUITE/MODULE with SUITE one of "
                         f"{', '.join(SUITES)}")
    for spec in suite(suite_name, batch, precision):
        if spec.name == name:
            return spec
    names = [n for n, *_ in SUITES[suite_name]]
    raise ValueError(f"unknown layer {name!r}; {suite_name} has e.g. {', '.join(names[:6])}, ...")


def layer_names(suite_name: str) -> list[str]:
    """Full names of a suite's layers."""
    return [f"{suite_name}/{n}" for n, *_ in SUITES[suite_name]]
