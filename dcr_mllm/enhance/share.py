"""``dcr-mllm push-tower DIR REPO``: a tower folder to a hub model repository, the way the field
shares towers: its weights, processor and tokenizer files as they are, and its model card
(``README.md``, which ``export-tower`` writes) with the scores of the ``eval-tower`` reports given,
each beside the other towers of that report and with its interval.

A report is taken only where it scored this very folder: the folder's fingerprint now must equal
the one the report recorded (``evaluation/freshness.py``), so a card never shows the scores of an
earlier export. Everything is checked before the hub is contacted; ``--dry-run`` stops there and
prints what would be uploaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.enhance.export import MODEL_CARD, front_matter
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation import freshness
from dcr_mllm.evaluation.tower.report import DETAILS
from dcr_mllm.presets.real import short_reason
from dcr_mllm.towers import inspect_tower


def scored_label(report: Path, tower_dir: Path) -> tuple[str, dict]:
    """The label under which ``report`` scored ``tower_dir`` as it is now, and the report's record."""
    try:
        record = json.loads((report / freshness.RECORD).read_text(encoding="utf-8"))
        towers = record["settings"]["towers"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DcrError(
            f"--results {report} is not a complete eval-tower report (no {freshness.RECORD} naming its towers)"
        ) from None
    labels = [label for label, path in towers.items() if Path(path).resolve() == tower_dir.resolve()]
    if not labels:
        raise DcrError(f"--results {report} did not score {tower_dir} (its towers: {', '.join(towers.values())})")
    if record.get("inputs", {}).get(f"tower/{labels[0]}") != freshness.fingerprint(tower_dir):
        raise DcrError(
            f"--results {report} scored an earlier version of {tower_dir}; score it again "
            f"(`dcr-mllm eval-tower ... --output {report}`)"
        )
    return labels[0], record


def evaluation_section(tower_dir: Path, reports: list[Path]) -> str:
    """The card's evaluation tables: per report, this tower's scores beside the report's other towers."""
    sections = []
    for report in reports:
        label, record = scored_label(report, tower_dir)
        details = json.loads((report / DETAILS).read_text(encoding="utf-8"))
        others = [other for other in details if other != label]
        header = ["metric", f"this tower ({label})", *others]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
        for metric in details[label]:
            cells = []
            for name in [label, *others]:
                row = details[name][metric]
                ci = row["ci"]
                cells.append(f"{row['value']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""))
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        settings = record["settings"]
        made_up = settings.get("synthetic_data")
        sections.append(
            f"### {settings['benchmark']}\n\n"
            + (freshness.synthetic_note({settings["benchmark"]: made_up}) + "\n\n" if made_up else "")
            + "\n".join(lines)
            + "\n\nPercent; brackets: the 95 % Wilson interval over the items scored, where the benchmark scores items.\n"
        )
    return "## Evaluation (`dcr-mllm eval-tower`)\n\n" + "\n".join(sections) if sections else ""


def push_tower(
    tower_dir: str | Path, repo: str, reports: list[str | Path] = (), private: bool = False, dry_run: bool = False
) -> list[str]:
    """Upload ``tower_dir`` to the hub model repository ``repo`` with its card; the lines to print.

    Args:
        tower_dir: a tower folder with its ``README.md`` card (``export-tower`` writes both).
        repo: the hub repository, ``owner/name`` (created if absent).
        reports: ``eval-tower`` output folders whose scores of this folder go into the card.
        private: create the repository private.
        dry_run: check everything and list what would be uploaded; contact nothing.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    tower_dir = Path(tower_dir)
    if not tower_dir.is_dir():
        raise DcrError(f"{tower_dir} is not a tower folder; give the folder export-tower or convert-tower wrote")
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise DcrError(f"{repo!r} is not a hub repository id; use owner/name") from None
    if "/" not in repo:
        raise DcrError(f"{repo!r} names no owner; use owner/name (your user or organisation)")
    inspect_tower(tower_dir)  # a complete tower in safetensors: a pickle is refused with the way to convert it
    card_file = tower_dir / MODEL_CARD
    if not card_file.is_file() or not front_matter(card_file.read_text(encoding="utf-8")):
        raise DcrError(
            f"{tower_dir} has no model card ({MODEL_CARD} with its metadata block); export-tower writes one, "
            "or write one (https://huggingface.co/docs/hub/model-cards)"
        )
    reports = [Path(r) for r in reports]
    for report in reports:
        if not (report / DETAILS).is_file():
            raise DcrError(f"--results {report} has no {DETAILS}; give an eval-tower --output folder (scored again)")
    card = card_file.read_text(encoding="utf-8")
    evaluation = evaluation_section(tower_dir, reports)
    if evaluation:
        card = card.rstrip("\n") + "\n\n" + evaluation
    files = sorted(
        p for p in tower_dir.rglob("*") if p.is_file() and p.name != MODEL_CARD and not p.name.startswith(".")
    )
    size = sum(p.stat().st_size for p in files) / 1e6
    plan = [
        f"repository: {repo} ({'private' if private else 'public'}; created if absent)",
        f"files: {MODEL_CARD} (model card, {len(reports)} evaluation report(s)), "
        + ", ".join(str(p.relative_to(tower_dir)) for p in files)
        + f" ({size:.1f} MB)",
    ]
    if dry_run:
        return [*plan, "dry run: nothing uploaded"]
    from huggingface_hub import CommitOperationAdd, HfApi

    operations = [CommitOperationAdd(str(p.relative_to(tower_dir)), str(p)) for p in files]
    operations.append(CommitOperationAdd(MODEL_CARD, card.encode()))
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.create_commit(repo, operations, commit_message=f"Upload tower from {tower_dir.name}")
    except Exception as err:  # offline, no token, no rights
        raise DcrError(
            f"pushing to {repo} failed ({type(err).__name__}: {short_reason(err)}); log in with `hf auth login` "
            f"where the hub is reachable, or upload the folder with `hf upload {repo} {tower_dir}`"
        ) from err
    return [*plan, f"uploaded: {commit.commit_url}"]


__all__ = ["push_tower"]
