"""YOLOv7 and YOLOv7-tiny backbones and necks written as Ultralytics model definitions.

Ultralytics ships no YOLOv7, so the graph is rebuilt row by row from plain Ultralytics modules (`Conv`, `Concat`,
`nn.MaxPool2d`, `nn.Upsample`) and topped with Ultralytics' anchor-free `Detect` head instead of YOLOv7's
anchor-based `IDetect`. The rows keep YOLOv7-tiny's original layer order, so tensors of an original YOLOv7-tiny
checkpoint match ours by name for the backbone and neck. Full YOLOv7's SPPCSPC block is spelled out as plain rows
and its RepConv outputs use their re-parameterised (deploy) form, a single 3x3 convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Row = list[Any]  # [from, repeats, module, args] as in an Ultralytics yaml


def _width(channels: int, width: float) -> int:
    """Scale a channel count and round up to a multiple of 8, as Ultralytics does for its n/s/m/l/x scales."""
    return max(8, int(math.ceil(channels * width / 8) * 8))


@dataclass
class _Graph:
    """Accumulates Ultralytics rows and hands back absolute layer indices, so blocks can refer to earlier outputs."""

    width: float
    depth: float
    rows: list[Row] = field(default_factory=list)

    def add(self, src: int | list[int], module: str, args: list[Any]) -> int:
        here = len(self.rows)
        rel = -1 if src == here - 1 else src
        self.rows.append([rel, 1, module, args])
        return here

    def conv(self, src: int, c: int, k: int = 1, s: int = 1) -> int:
        return self.add(src, "Conv", [_width(c, self.width), k, s])

    def concat(self, srcs: list[int]) -> int:
        return self.add(srcs, "Concat", [1])

    def maxpool(self, src: int, k: int, s: int) -> int:
        return self.add(src, "nn.MaxPool2d", [k, s, k // 2 if s == 1 else 0])

    def upsample(self, src: int) -> int:
        return self.add(src, "nn.Upsample", [None, 2, "nearest"])

    def elan(self, src: int, c_branch: int, c_chain: int, c_out: int, n: int, every: int) -> int:
        """ELAN block: two 1x1 branches, a chain of n 3x3 convs on the second, concat every `every`-th chain output.

        The concat order (last chain output first, first branch last) is YOLOv7's, which keeps weights portable.
        Depth scaling shortens the chain.
        """
        a = self.conv(src, c_branch)
        b = self.conv(src, c_branch)
        chain = [b]
        for _ in range(max(1, round(n * self.depth))):
            chain.append(self.conv(chain[-1], c_chain, 3))
        return self.conv(self.concat([*chain[:0:-1][::every], b, a]), c_out)

    def spp_tiny(self, src: int, c: int) -> int:
        """YOLOv7-tiny's SPP: parallel stride-1 max-pools (5, 9, 13) on one branch, concatenated with a 1x1 branch."""
        a = self.conv(src, c)
        b = self.conv(src, c)
        pools = [self.maxpool(b, k, 1) for k in (5, 9, 13)]
        mixed = self.conv(self.concat([*pools[::-1], b]), c)
        return self.conv(self.concat([mixed, a]), c)

    def sppcspc(self, src: int, c: int) -> int:
        """YOLOv7's SPPCSPC block written out as plain rows (cv1..cv7 of the original module)."""
        x1 = self.conv(self.conv(self.conv(src, c), c, 3), c)
        pools = [self.maxpool(x1, k, 1) for k in (5, 9, 13)]
        y1 = self.conv(self.conv(self.concat([x1, *pools]), c), c, 3)
        y2 = self.conv(src, c)
        return self.conv(self.concat([y1, y2]), c)

    def down(self, src: int, c: int, skip: int | None = None) -> int:
        """YOLOv7's MP-Conv transition: a max-pool branch and a stride-2 conv branch (plus a neck skip) concatenated."""
        pooled = self.conv(self.maxpool(src, 2, 2), c)
        strided = self.conv(self.conv(src, c), c, 3, 2)
        return self.concat([strided, pooled] + ([skip] if skip is not None else []))

    def lateral(self, top: int, skip: int, c: int) -> int:
        """Top-down path: reduce and upsample the deeper map, reduce the backbone skip, concatenate."""
        up = self.upsample(self.conv(top, c))
        return self.concat([self.conv(skip, c), up])


def yolov7_tiny(width: float = 1.0, depth: float = 1.0) -> tuple[list[Row], list[int], int]:
    """Rows of YOLOv7-tiny (backbone + neck), the three output layers (P3, P4, P5) and the backbone's last layer."""
    g = _Graph(width, depth)
    x = g.conv(g.conv(-1, 32, 3, 2), 64, 3, 2)
    x = g.elan(x, 32, 32, 64, 2, 1)
    p3 = g.elan(g.maxpool(x, 2, 2), 64, 64, 128, 2, 1)
    p4 = g.elan(g.maxpool(p3, 2, 2), 128, 128, 256, 2, 1)
    p5 = g.elan(g.maxpool(p4, 2, 2), 256, 256, 512, 2, 1)
    backbone_end = p5
    spp = g.spp_tiny(p5, 256)
    n4 = g.elan(g.lateral(spp, p4, 128), 64, 64, 128, 2, 1)
    n3 = g.elan(g.lateral(n4, p3, 64), 32, 32, 64, 2, 1)
    m4 = g.elan(g.concat([g.conv(n3, 128, 3, 2), n4]), 64, 64, 128, 2, 1)
    m5 = g.elan(g.concat([g.conv(m4, 256, 3, 2), spp]), 128, 128, 256, 2, 1)
    outs = [g.conv(n3, 128, 3), g.conv(m4, 256, 3), g.conv(m5, 512, 3)]
    return g.rows, outs, backbone_end


def yolov7(width: float = 1.0, depth: float = 1.0) -> tuple[list[Row], list[int], int]:
    """Rows of YOLOv7 (backbone + neck, SPPCSPC as rows, RepConv in deploy form) and its three output layers."""
    g = _Graph(width, depth)
    x = g.conv(g.conv(g.conv(g.conv(-1, 32, 3), 64, 3, 2), 64, 3), 128, 3, 2)
    c3 = g.elan(x, 64, 64, 256, 4, 2)
    c4 = g.elan(g.down(c3, 128), 128, 128, 512, 4, 2)
    c5 = g.elan(g.down(c4, 256), 256, 256, 1024, 4, 2)
    c6 = g.elan(g.down(c5, 512), 256, 256, 1024, 4, 2)
    backbone_end = c6
    spp = g.sppcspc(c6, 512)
    n4 = g.elan(g.lateral(spp, c5, 256), 256, 128, 256, 4, 1)
    n3 = g.elan(g.lateral(n4, c4, 128), 128, 64, 128, 4, 1)
    m4 = g.elan(g.down(n3, 128, skip=n4), 256, 128, 256, 4, 1)
    m5 = g.elan(g.down(m4, 256, skip=spp), 512, 256, 512, 4, 1)
    outs = [g.conv(n3, 256, 3), g.conv(m4, 512, 3), g.conv(m5, 1024, 3)]
    return g.rows, outs, backbone_end


ARCHITECTURES = {"yolov7-tiny": (yolov7_tiny, "nn.LeakyReLU(0.1)"), "yolov7": (yolov7, "nn.SiLU()")}


def model_yaml(arch: str, nc: int, width: float = 1.0, depth: float = 1.0) -> dict[str, Any]:
    """The Ultralytics model dictionary for `arch`, with the anchor-free Detect head on the three outputs."""
    if arch not in ARCHITECTURES:
        from common.errors import ConfigError

        raise ConfigError(f"model.arch: unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    build, act = ARCHITECTURES[arch]
    rows, outs, backbone_end = build(width, depth)
    return {
        "nc": nc,
        "activation": act,
        "backbone": rows[: backbone_end + 1],
        "head": rows[backbone_end + 1 :] + [[outs, 1, "Detect", [nc]]],
    }
