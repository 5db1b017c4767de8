"""`fracfl model info|import`: inspect architectures and bring a site's own checkpoint into fracfl's format."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from common.commands.options import add_arch, resolve_arch


def _info(a: argparse.Namespace) -> int:
    from common.nn.model import ModelSpec, build_model, layer_parts

    arch, width, depth = resolve_arch(a)
    model = build_model(ModelSpec(arch=arch, width=width, depth=depth))
    parts = layer_parts(model)
    count = {k: sum(p.numel() for i in v for p in model.model[i].parameters()) for k, v in parts.items()}
    print(
        f"{arch} (width {width}, depth {depth}): YOLOv7 backbone and neck with Ultralytics' anchor-free "
        f"Detect head; {len(model.model)} layers"
    )
    for k, v in count.items():
        print(f"  {k:9s} layers {parts[k][0]:3d}-{parts[k][-1]:3d}  {v / 1e6:7.3f} M parameters")
    print(f"  total                      {sum(count.values()) / 1e6:7.3f} M parameters")
    return 0


def _import(a: argparse.Namespace) -> int:
    from common.nn.weights import model_from_config, save_weights

    arch, width, depth = resolve_arch(a)
    model, spec, report = model_from_config(arch, {0: "fracture"}, width, depth, "batch", a.checkpoint)
    print(report.summary())
    if a.verbose:
        print(json.dumps(asdict(report), indent=1, default=list))
    save_weights(model, spec, a.out, {"source": f"imported from {a.checkpoint}", "imgsz": a.imgsz})
    print(f"wrote {a.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model architectures and checkpoint import")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    for name, fn, helptext in (
        ("info", _info, "parameter counts per part"),
        ("import", _import, "convert a checkpoint (YOLOv7, Ultralytics, state dict)"),
    ):
        q = msub.add_parser(name, help=helptext)
        add_arch(q)
        q.set_defaults(func=fn)
        if name == "import":
            q.add_argument("checkpoint", help="checkpoint to read (.pt, .pth, .safetensors)")
            q.add_argument("--out", required=True, help="fracfl weights file to write")
            q.add_argument("--imgsz", type=int, default=640, help="input size to record for evaluation")
            q.add_argument("--verbose", action="store_true", help="list every tensor")
