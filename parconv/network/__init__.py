"""Whole networks: layer graphs, built-in models, activation layouts, exact
redistributions, per-layer byte models and the joint per-layer grid plan (pure; no MPI);
ONNX import (``load_onnx``; the ``onnx`` package is imported only when it is called).

See ``docs/network.md``.
"""

from __future__ import annotations

from .graph import Graph, Node
from .layout import Layout, Placement, conv_input_layout, conv_output_layout
from .models import MODELS, build
from .onnx_import import OnnxImportError, load_onnx
from .plan import LayerPlan, NetworkPlan, plan_fixed, plan_network
from .redistribute import Redistribution, redistribute

__all__ = [
    "Graph", "Node", "Layout", "Placement", "conv_input_layout", "conv_output_layout",
    "MODELS", "build", "LayerPlan", "NetworkPlan", "plan_network", "plan_fixed", "Redistribution",
    "redistribute", "load_onnx", "OnnxImportError",
]
