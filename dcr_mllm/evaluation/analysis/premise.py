"""The premise, measured before any training: ``dcr-mllm world premise``.

DCR can teach the tower an attribute only if (a) the base tower does not already see it and
(b) the denoiser takes it from the condition in the form DCR gives it. Per fine attribute:

- **hidden**: linear-probe accuracy of the base ``world-clip`` (global embedding; feature layer −2)
  beside ``clip_reference``, the same CLIP build trained on captions that name every attribute:
  the gap is what the base tower's web-like captions left out;
- **carried**: how much worse the denoiser predicts (MSE to its target, mean over t in 200, 500,
  800) with a wrong value of the attribute than with the right one, given in DCR's global form
  (the empty prompt shifted by one vector on every token) and in the token form (a vector per
  context token: the caption's own context, what ``objective.condition: tokens`` can at best
  give), each as a share of what the whole caption gains over the empty prompt.

Measured on the world's validation set (never the reported evaluation set). An attribute DCR can
teach is one both hidden (gap >= ``HIDDEN_POINTS``) and carried (share >= ``CARRIED_SHARE``) in the
form used.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.world.scenes import FINE_ATTRIBUTES

HIDDEN_POINTS = 10.0  # probe points the reference sees and the base tower does not
CARRIED_SHARE = 0.1  # of the caption's whole gain over the empty prompt
FORMS = {"global": "shift_gain", "tokens": "mse_gain"}


def measure_premise(
    output: str | Path = "outputs/world",
    spec=None,
    world_root: str | Path | None = None,
    count: int = 256,
    val_count: int | None = None,
) -> dict:
    """Build what is missing (the world models, the reference CLIP, ``OUTPUT/val``), measure, and
    write ``OUTPUT/premise.json`` and ``premise.md``.

    Args:
        output: the world's output directory (``val/`` is read or written there, the premise files too).
        spec: the world's ``WorldSpec``; None: the default world.
        world_root: where the world models are built; None: ``default_world_root(spec)``.
        count: validation images the denoiser's sensitivity to the condition is measured on.
        val_count: images in the validation set; None: ``world.prepare.VAL_COUNT``.
    """
    from dcr_mllm.evaluation.analysis.condition import condition_sensitivity
    from dcr_mllm.evaluation.tower.world_metrics import evaluate_world
    from dcr_mllm.towers import load_tower
    from dcr_mllm.world.models import WorldSpec, build_world, default_world_root, ensure_world
    from dcr_mllm.world.prepare import VAL_COUNT, VAL_SEED
    from dcr_mllm.world.scenes import world_eval_set

    spec = spec or WorldSpec()
    out = Path(output)
    models = build_world(world_root, spec)
    reference = ensure_world("clip_reference", world_root or default_world_root(spec), spec)
    val = world_eval_set(
        out / "val", VAL_SEED, val_count or VAL_COUNT, spec.image_size, spec.one_background
    )  # the same set build-world writes
    probes = {
        name: evaluate_world(load_tower(path), val, pairs_per_attribute=1)
        for name, path in (("base", models["clip"]), ("reference", reference))
    }
    sensitivity = condition_sensitivity(models["sd"], val, count)
    result = premise_table(probes, sensitivity)
    (out / "premise.json").write_text(json.dumps({**result, "probes": probes, "sensitivity": sensitivity}, indent=1))
    (out / "premise.md").write_text("\n".join(premise_report(result)) + "\n")
    return result


def premise_table(probes: dict[str, dict[str, float]], sensitivity: dict[str, float]) -> dict:
    """``{"attributes": {attribute: row}, "caption_gain": ...}``: per attribute the probes, the gap,
    each form's share, and whether DCR can teach it in that form."""
    caption_gain = sensitivity["mse/empty"] - sensitivity["mse/caption"]
    rows = {}
    for attribute in FINE_ATTRIBUTES:
        row = {
            f"{name}/{kind}": probes[name][f"{kind}/{attribute}"]
            for name in probes
            for kind in ("probe_global", "probe_layer")
        }
        row["hidden_global"] = row["reference/probe_global"] - row["base/probe_global"]
        row["hidden_layer"] = row["reference/probe_layer"] - row["base/probe_layer"]
        for form, key in FORMS.items():
            row[f"carried_{form}"] = sensitivity[f"{key}/{attribute}"] / caption_gain
            hidden = row["hidden_global"] if form == "global" else row["hidden_layer"]
            row[f"teachable_{form}"] = hidden >= HIDDEN_POINTS and row[f"carried_{form}"] >= CARRIED_SHARE
        rows[attribute] = row
    return {"attributes": rows, "caption_gain": caption_gain}


def premise_report(result: dict) -> list[str]:
    lines = [
        "# The premise: is each attribute hidden from the base tower, and carried by DCR's condition?",
        "",
        f"Probe accuracy (%) of the base world-clip and of the reference (same build, captions naming every attribute) on the "
        f"validation set; carried = the denoiser's extra error with that attribute wrong, as a share of the whole caption's gain "
        f"over the empty prompt ({result['caption_gain']:.3f} MSE). Teachable: hidden by >= {HIDDEN_POINTS:.0f} points "
        f"and carried >= {CARRIED_SHARE:.0%} in that form (global form: global-embedding probe; token form: feature-layer probe).",
        "",
        "| attribute | base global | reference global | base layer −2 | reference layer −2 | carried, global form | carried, token form "
        "| teachable: global | teachable: tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for attribute, row in result["attributes"].items():
        lines.append(
            f"| {attribute} | {row['base/probe_global']:.1f} | {row['reference/probe_global']:.1f} | {row['base/probe_layer']:.1f} "
            f"| {row['reference/probe_layer']:.1f} | {row['carried_global']:.1%} | {row['carried_tokens']:.1%} "
            f"| {'yes' if row['teachable_global'] else 'no'} | {'yes' if row['teachable_tokens'] else 'no'} |"
        )
    return lines
