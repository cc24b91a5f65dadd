"""One head address everywhere, and the shape of a model's attention."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ADDRESS = re.compile(r"^(\d+)-(\d+)$")


@dataclass(frozen=True, order=True)
class HeadAddress:
    """A query head: layer index and query-head index within the layer, written ``L-H``.

    This is the form of the official retrieval-score files. A KV head is never
    addressed with this type; use :meth:`HeadLayout.kv_head_of`.
    """

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}-{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadAddress:
        match = _ADDRESS.match(text.strip())
        if match is None:
            raise ValueError(f"Head address must look like 'L-H' (e.g. '5-2'). Got {text!r} instead.")
        return cls(int(match.group(1)), int(match.group(2)))


def head_label(layer: int, head: int) -> str:
    """The ``L-H`` form of query head ``head`` of layer ``layer`` (the official score files' form)."""
    return str(HeadAddress(int(layer), int(head)))


def flat_label(flat: int, num_heads: int) -> str:
    """The ``L-H`` form of the head at layer-major index ``flat`` of a model with ``num_heads`` per layer."""
    return head_label(int(flat) // num_heads, int(flat) % num_heads)


def parse_label(text: str) -> tuple[int, int]:
    """(layer, head) of an ``L-H`` label."""
    address = HeadAddress.parse(text)
    return address.layer, address.head


@dataclass(frozen=True)
class HeadLayout:
    """The attention geometry of a decoder model.

    ``layer_windows[l]`` is ``None`` for a full-attention layer, or the sliding
    window length (in tokens) of a sliding-window layer.
    """

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_windows: tuple[int | None, ...] = field(default=())
    max_positions: int | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})."
            )
        if not self.layer_windows:
            object.__setattr__(self, "layer_windows", (None,) * self.num_layers)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads

    def kv_head_of(self, head: int) -> int:
        """The KV head that query head ``head`` reads (query head h uses KV head h // group)."""
        return head // self.group_size

    def layer_kind(self, layer: int) -> str:
        window = self.layer_windows[layer]
        return "full" if window is None else f"sliding({window})"

    def full_attention_layers(self) -> list[int]:
        return [layer for layer, window in enumerate(self.layer_windows) if window is None]

    def addresses(self) -> list[HeadAddress]:
        return [
            HeadAddress(layer, head) for layer in range(self.num_layers) for head in range(self.num_heads)
        ]

    def flat(self, address: HeadAddress) -> int:
        """The head's index in layer-major order (the order of a (layers, heads) array flattened)."""
        self.check(address)
        return address.layer * self.num_heads + address.head

    def address(self, flat: int) -> HeadAddress:
        """The head at layer-major index ``flat``."""
        if not 0 <= flat < self.total_heads:
            raise ValueError(f"Head index {flat} is outside this model's {self.total_heads} heads.")
        return HeadAddress(int(flat) // self.num_heads, int(flat) % self.num_heads)

    def label(self, flat: int) -> str:
        """The ``L-H`` form of the head at layer-major index ``flat``."""
        return str(self.address(flat))

    @classmethod
    def from_manifest(cls, layout: dict) -> HeadLayout:
        """The layout a run's manifest recorded (JSON turns its tuple of windows into a list)."""
        return cls(**{**layout, "layer_windows": tuple(layout.get("layer_windows") or ())})

    def check(self, address: HeadAddress) -> None:
        if not (0 <= address.layer < self.num_layers and 0 <= address.head < self.num_heads):
            raise ValueError(
                f"Head {address} is outside this model ({self.num_layers} layers x {self.num_heads} heads)."
            )

    def describe(self) -> str:
        kinds: dict[str, list[int]] = {}
        for layer in range(self.num_layers):
            kinds.setdefault(self.layer_kind(layer), []).append(layer)
        parts = [f"{kind}: layers {_ranges(layers)}" for kind, layers in kinds.items()]
        return (
            f"{self.num_layers} layers x {self.num_heads} query heads ({self.num_kv_heads} KV heads, "
            f"head_dim {self.head_dim}); " + "; ".join(parts)
        )


def _ranges(values: list[int]) -> str:
    out: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(out)
