"""A Gemmini instance: array size, memories, element types, DMA.

Defaults are Gemmini's default configuration (``docs/gemmini.md``): a 16×16 array, a
256 KiB scratchpad of 4 banks × 4096 rows of DIM int8, a 64 KiB accumulator of 1024
rows of DIM int32, a 16-byte DMA beat, ≤ 64-byte requests, 16 requests in flight.
Users describe their own build in a small TOML or JSON file whose keys are the field
names of :class:`GemminiConfig` (all optional), e.g.::

    dim = 32
    acc_rows = 2048
    dram_latency = 120
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_INT_TYPES = {"int8": 1, "uint8": 1}
_ACC_TYPES = {"int32": 4}


@dataclass(frozen=True)
class GemminiConfig:
    """Parameters of one Gemmini build.

    Parameters
    ----------
    dim : systolic array side (DIM); a scratchpad row holds DIM inputs, an
        accumulator row DIM accumulators.
    sp_banks, sp_bank_rows : scratchpad banks and rows per bank.
    acc_rows : accumulator rows.
    input_type : element type of inputs and weights (``int8`` or ``uint8`` inputs;
        weights are int8).
    acc_type : accumulator type (``int32``).
    dma_beat_bytes : bytes per DMA beat (one beat per cycle at most).
    dma_max_request_bytes : largest single DMA request.
    dma_inflight : requests in flight at once.
    dram_latency : cycles from issuing a request to its data (also paid once per
        transfer phase).
    double_buffered : halve both memories so that loads overlap execution.
    min_compute_cycles : shortest preload+compute pair (4 in Gemmini).
    """

    dim: int = 16
    sp_banks: int = 4
    sp_bank_rows: int = 4096
    acc_rows: int = 1024
    input_type: str = "int8"
    acc_type: str = "int32"
    dma_beat_bytes: int = 16
    dma_max_request_bytes: int = 64
    dma_inflight: int = 16
    dram_latency: int = 100
    double_buffered: bool = True
    min_compute_cycles: int = 4

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int):
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ValueError(f"gemmini config field {f.name!r}: expected an integer, got {v!r}")
                if v <= 0:
                    raise ValueError(f"gemmini config field {f.name!r} must be positive, got {v}")
            elif f.type in ("bool", bool):
                if not isinstance(v, bool):
                    raise ValueError(f"gemmini config field {f.name!r}: expected true/false, got {v!r}")
        if self.input_type not in _INT_TYPES:
            raise ValueError(f"gemmini config field 'input_type': unsupported {self.input_type!r}; "
                             f"supported: {', '.join(_INT_TYPES)}")
        if self.acc_type not in _ACC_TYPES:
            raise ValueError(f"gemmini config field 'acc_type': unsupported {self.acc_type!r}; "
                             f"supported: {', '.join(_ACC_TYPES)}")
        if self.dma_max_request_bytes % self.dma_beat_bytes:
            raise ValueError("gemmini config field 'dma_max_request_bytes' must be a multiple of "
                             f"dma_beat_bytes ({self.dma_beat_bytes}), got {self.dma_max_request_bytes}")

    # -- derived sizes ----------------------------------------------------------------
    @property
    def in_bytes(self) -> int:
        """Bytes per input/weight element."""
        return _INT_TYPES[self.input_type]

    @property
    def acc_bytes(self) -> int:
        """Bytes per accumulator element."""
        return _ACC_TYPES[self.acc_type]

    @property
    def sp_rows(self) -> int:
        """Scratchpad rows in all."""
        return self.sp_banks * self.sp_bank_rows

    @property
    def sp_rows_tile(self) -> int:
        """Scratchpad rows one tile may use (half when double buffered): 8192 by default."""
        return self.sp_rows // 2 if self.double_buffered else self.sp_rows

    @property
    def acc_rows_tile(self) -> int:
        """Accumulator rows one tile may use (half when double buffered): 512 by default."""
        return self.acc_rows // 2 if self.double_buffered else self.acc_rows

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.dim * self.dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT = GemminiConfig()


def config_from_dict(data: dict[str, Any], source: str = "config") -> GemminiConfig:
    """Build a config from a mapping of field names; unknown keys are errors.

    Raises
    ------
    ValueError
        Naming the unknown or invalid field.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a table/object of Gemmini parameters")
    data = dict(data.get("gemmini", data)) if isinstance(data.get("gemmini"), dict) else dict(data)
    known = {f.name for f in dataclasses.fields(GemminiConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown gemmini config field(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    return GemminiConfig(**data)


def load_config(path: str | Path | None) -> GemminiConfig:
    """Read a config from a ``.toml`` or ``.json`` file (``None``: the default build).

    A top-level ``[gemmini]`` table/object is accepted as well as bare keys.

    Raises
    ------
    ValueError
        For an unreadable file, an unknown extension or a bad field (named).
    """
    if path is None:
        return DEFAULT
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read gemmini config {p}: {exc.strerror}") from None
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(raw.decode())
        elif suffix == ".json":
            data = json.loads(raw.decode())
        else:
            raise ValueError(f"gemmini config {p}: expected a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"gemmini config {p}: parse error: {exc}") from None
    return config_from_dict(data, str(p))
