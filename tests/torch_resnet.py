"""ResNet-18 built by hand from ``torch.nn`` with torchvision's module names (no
torchvision), for the reference cross-check (tests/test_network_reference.py) and the
network benchmark (bench/bench_network_run.py, which imports this file by path).

PyTorch is optional: the caller imports it and passes the module in; this file never
imports it.
"""

from __future__ import annotations


def torch_resnet18(torch):
    """An untrained ResNet-18 (``torch.nn.Module``) whose ``state_dict`` names are
    torchvision's."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, c in enumerate((64, 128, 256, 512), start=1):
                s = 1 if i == 1 else 2
                setattr(self, f"layer{i}", nn.Sequential(Block(cin, c, s), Block(c, c, 1)))
                cin = c
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18()


def load_numpy_weights(torch, net, weights: dict) -> None:
    """Load numpy ``weights`` (parconv's names = torchvision's) into ``net``; entries of
    its ``state_dict`` not in ``weights`` (``num_batches_tracked``) keep their values."""
    sd = net.state_dict()
    net.load_state_dict({k: torch.from_numpy(weights[k]) if k in weights else v
                         for k, v in sd.items()})
