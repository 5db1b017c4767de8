"""card.md: the model card as a page a governance board or a site's clinical lead can read without tooling."""

from __future__ import annotations

from typing import Any

from server.registry.limits import limitations

# Known metrics: label and a plain-language meaning. Others are shown under their own names.
METRICS = {
    "map50": ("mAP@0.5", "box quality: how well drawn boxes match the radiologists' boxes (loose overlap)"),
    "map50_95": ("mAP@0.5:0.95", "box quality with strict overlap, averaged over thresholds"),
    "sensitivity": ("Sensitivity", "share of radiographs with a fracture that the model flags"),
    "specificity": ("Specificity", "share of radiographs without a fracture that the model leaves unflagged"),
    "roc_auc": ("ROC AUC", "how well its image-level score separates fractured from normal radiographs"),
    "precision": ("Precision", "share of drawn boxes that are real fractures"),
    "recall": ("Recall", "share of real fracture boxes that the model draws"),
    "f1": ("F1", "balance of precision and recall"),
    "loss": ("Loss", "training objective (lower is better)"),
    "n_images": ("Images", "radiographs evaluated"),
}
_ORDER = list(METRICS)


def _fmt(value: Any, metric: bool = False) -> str:
    """Metrics with three decimals; configuration values and descriptors as written (`0.5`, `1e-05`)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not metric:
            return f"{value:g}"
        return f"{value:.3f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _cell(value: Any, metric: bool = False) -> str:
    return _fmt(value, metric).replace("|", "\\|").replace("\n", " ")


def _label(key: str) -> str:
    return METRICS.get(key, (key, ""))[0]


def _metric_keys(dicts: list[dict[str, Any]]) -> list[str]:
    keys = {k for d in dicts for k in d}
    return [k for k in _ORDER if k in keys] + sorted(keys - set(_ORDER))


def _table(header: list[str], rows: list[list[Any]], metric: bool = False) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c, metric) for c in row) + " |" for row in rows]
    return out


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "defaults"


def _size(n: Any) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _vs(value: Any, torch_value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f} ({torch_value:.{digits}f})" if torch_value is not None else f"{value:.{digits}f}"


def exports_table(exports: list[dict[str, Any]]) -> list[str]:
    """TFLite builds for devices without a GPU: file, size, hash, and how closely each matches PyTorch."""
    rows = []
    for e in exports:
        delta, goal = e.get("map50_delta_points"), e.get("meets_goal")
        diff = e.get("max_box_diff_px")
        rows.append(
            [
                e["variant"],
                f"`{e['file']}`",
                _size(e.get("bytes")),
                e["status"],
                _vs(e.get("map50"), e.get("map50_torch")),
                "n/a" if delta is None else f"{delta:+.2f}" + ("" if goal is None else " ✓" if goal else " ✗"),
                _vs(e.get("sensitivity"), e.get("sensitivity_torch")),
                "n/a" if diff is None else f"{diff:.2f} px",
                "n/a" if e.get("max_score_diff") is None else f"{e['max_score_diff']:.4f}",
                "n/a" if e.get("seconds") is None else f"{e['seconds']:.1f} s",
                f"`{e['sha256'][:16]}…`" if e.get("sha256") else "n/a",
            ]
        )
    out = [
        "TFLite (LiteRT) builds for devices without a GPU, each compared with this PyTorch model on the validation "
        "images through the same preprocessing and postprocessing. mAP@0.5 and sensitivity: edge (PyTorch). "
        "Goal: fp32/fp16 within 0.1 point of mAP@0.5, int8 within 1.5 points (✓ met, ✗ missed). Box shift: the "
        "largest displacement of PyTorch's top boxes on a fixed set of images (network pixels). Score diff: the largest "
        "change of an image's fracture score (its highest box score) over the validation images.",
        "",
    ]
    out += _table(
        [
            "Variant",
            "File",
            "Size",
            "Status",
            "mAP@0.5",
            "Δ mAP@0.5 (points)",
            "Sensitivity",
            "Box shift",
            "Score diff",
            "Export time",
            "SHA-256",
        ],
        rows,
    )
    notes = [f"- {e['variant']}: {e['note']}" for e in exports if e.get("note")]
    return out + ([""] + notes if notes else []) + ["", "Full SHA-256 of every file: card.json, `exports`."]


def _ci(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.3f} ({lo:.3f}-{hi:.3f}, n={entry['n']:,})"


def limitations_section(lim: dict[str, Any]) -> list[str]:
    """Intended use, data per site, performance with intervals, failure modes: what governance staff are handed."""
    out = [
        "## Intended use and limitations",
        "",
        f"**Intended use.** {lim['intended_use']}",
        "",
        "**Data per site.** Training images this round and validation images (the model's held-out figures):",
        "",
    ]
    out += _table(
        ["Site", "Training images", "Status", "Validation images"],
        [[d["site"], d["training_images"], d["status"], d["validation_images"]] for d in lim["data"]],
    )
    out += ["", f"**Performance on held-out data.** {lim['held_out']} {lim['intervals']}", ""]
    if lim["performance"]:
        out += _table(
            ["Scope", "Images (with fracture)", "Sensitivity (95 % CI)", "Specificity (95 % CI)", "mAP@0.5", "ROC AUC"],
            [
                [
                    r["scope"],
                    f"{_fmt(r['images'])} ({_fmt(r['fracture_images'])})",
                    _ci(r["sensitivity"]),
                    _ci(r["specificity"]),
                    r["map50"],
                    r["roc_auc"],
                ]
                for r in lim["performance"]
            ],
            metric=True,
        )
    else:
        out += ["No validation figures recorded for this version."]
    out += ["", "**Known failure modes.**", ""] + [f"- {f}" for f in lim["failure_modes"]]
    return out


def render_markdown(card: dict[str, Any]) -> str:
    """The page for one version; deterministic for a given card (card.json is the source of truth)."""
    model, strategy, metrics = card["model"], card["strategy"], card["metrics"]
    lines = [f"# Fracture detection model {card['version']} (round {card['round']})", ""]
    parent = f"builds on {card['parent']}" if card.get("parent") else "first version of this run"
    lines += [f"Published {card['created']} by federated run `{card['run_id']}`, round {card['round']}; {parent}."]
    if card.get("updated"):
        lines += [f"Card last updated {card['updated']} (the weights are unchanged)."]
    lines += [
        "",
        "## What this model is",
        "",
        f"A detector that draws boxes around suspected fractures on radiographs: {model['description']}. "
        "It was trained by federated learning: each site trained on its own images and sent only model "
        "updates; no images left a site.",
        "",
    ]
    facts = [
        ["Architecture", f"{model['arch']} (width {_fmt(model['width'])}, depth {_fmt(model['depth'])})"],
        ["Classes", ", ".join(model["classes"])],
        ["Normalisation", model["norm"]],
    ]
    if model.get("parameters") is not None:
        facts.append(["Parameters", f"{model['parameters'] / 1e6:.2f} M"])
    facts += [
        ["Aggregation strategy", f"{strategy['name']} ({_params(strategy['params'])})"],
        ["Configuration hash", f"`{card['config_hash']}`" if card.get("config_hash") else "not recorded"],
    ]
    lines += _table(["", ""], facts)
    lines += [""] + limitations_section(card.get("limitations") or limitations(card["sites"], metrics))

    lines += ["", "## Participating sites", ""]
    sites = card["sites"]
    if sites:
        keys = _metric_keys([s["metrics"] for s in sites])
        rows = [[s["name"], s["examples"], s["status"]] + [s["metrics"].get(k) for k in keys] for s in sites]
        lines += ["Each site's own figures from its local training in this round.", ""]
        lines += _table(["Site", "Examples", "Status"] + [_label(k) for k in keys], rows, metric=True)
        trained = sum(s["status"] == "trained" for s in sites)
        lines += [
            "",
            f"{trained} of {len(sites)} sites contributed to this version; "
            f"{sum(s['examples'] for s in sites if s['status'] == 'trained'):,} training examples in all.",
        ]
    else:
        lines += ["No sites recorded."]

    lines += ["", "## Validation metrics", ""]
    pooled = metrics["pooled"]
    if pooled:
        lines += ["Measured on the sites' validation images pooled together.", ""]
        lines += _table(
            ["Metric", "Value", "What it means"],
            [[_label(k), pooled[k], METRICS.get(k, ("", ""))[1]] for k in _metric_keys([pooled])],
            metric=True,
        )
    else:
        lines += ["No pooled validation metrics recorded."]
    per_site = metrics["per_site"]
    if per_site:
        keys = _metric_keys(list(per_site.values()))
        lines += ["", "### Per site", ""]
        lines += _table(
            ["Site"] + [_label(k) for k in keys],
            [[s] + [m.get(k) for k in keys] for s, m in per_site.items()],
            metric=True,
        )

    lines += ["", "## Privacy", ""]
    privacy = card.get("privacy")
    if privacy is None:
        lines += ["Not recorded for this run."]
    else:
        lines += [f"{k.replace('_', ' ').capitalize()}: {v}." for k, v in privacy.items() if not isinstance(v, dict)]
        sites = privacy.get("sites") or {}
        if sites:
            cols = ["epsilon", "epsilon_rdp", "epsilon_prv", "delta", "ceiling_epsilon", "noise_multiplier", "round"]
            lines += [
                "",
                "Epsilon spent by each site's images up to this version (epsilon = RDP, the "
                "figure budgets are checked against; PRV beside it):",
                "",
            ]
            lines += _table(
                ["Site"] + [_label(k) for k in cols], [[s] + [f.get(k) for k in cols] for s, f in sites.items()]
            )

    lines += ["", "## Edge exports", ""]
    exports = card.get("exports") or []
    if not exports:
        lines += ["None yet."]
    else:
        lines += exports_table(exports)

    lines += [
        "",
        "## Content hashes",
        "",
        "SHA-256 of the files in this version; `fracfl registry verify` recomputes them.",
        "",
    ]
    lines += _table(["File", "SHA-256"], [[f, f"`{h}`"] for f, h in sorted(card["hashes"].items())])
    lines += [
        "",
        "---",
        "",
        "This card holds no patient data: only site names, example counts, statuses and aggregate numeric metrics.",
        "",
    ]
    return "\n".join(lines)
