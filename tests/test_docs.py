"""The documentation cannot rot: links resolve, named paths exist, documented commands parse, shipped
configs resolve, and the generated parts of docs/ are what ``docs/generate.py`` writes now."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from dcr_mllm.cli import build_parser, main, parse_args

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
#: top-level entries of the repository a backticked path may start with
TOP = {p.name for p in REPO.iterdir() if not p.name.startswith(".git")} - {"outputs"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _prose(page: Path) -> str:
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def _expand(path: str) -> list[str]:
    """``a.{json,png}`` -> ``a.json``, ``a.png`` (one brace group)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if not match:
        return [path]
    return [path[: match.start()] + part + path[match.end() :] for part in match.group(1).split(",")]


def links():
    for page in PAGES:
        for match in LINK.finditer(_prose(page)):
            target = match.group(1) or match.group(2)
            if not re.match(r"[a-z]+:", target):
                yield pytest.param(page, target, id=f"{page.relative_to(REPO)}->{target}")


@pytest.mark.parametrize(("page", "target"), list(links()))
def test_every_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    assert resolved.exists(), f"{page.relative_to(REPO)}: {target} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{page.relative_to(REPO)}: no heading #{anchor} in {path or page.name}"


def named_paths():
    for page in PAGES:
        for span in CODE_SPAN.findall(_prose(page)):
            word = span.strip().split()[0] if span.strip() else ""
            first = word.split("/")[0]
            if (
                "/" not in word
                or first not in TOP
                or re.search(r"[<>*A-Z]{2,}|<|\*|\.\.\.", word.replace("README", ""))
            ):
                continue
            yield pytest.param(page, word.rstrip(".,:;"), id=f"{page.relative_to(REPO)}:{word}")


@pytest.mark.parametrize(("page", "path"), list(named_paths()))
def test_every_repository_path_named_in_the_docs_exists(page, path):
    missing = [p for p in _expand(path) if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"{page.relative_to(REPO)} names {', '.join(missing)}, which is not in the repository"


def documented_commands():
    for page in PAGES:
        for block in FENCE.findall(page.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                if not re.match(r"\s*(\w+=\S*\s+)*dcr-mllm\s", line):
                    continue
                words = shlex.split(line, comments=True)
                while words and re.match(r"\w+=", words[0]):  # VAR=value before the command
                    words = words[1:]
                if words and words[0] == "dcr-mllm":
                    yield pytest.param(page, words[1:], id=f"{page.relative_to(REPO)}:{' '.join(words[1:3])}")


def test_the_docs_show_commands():
    assert len(list(documented_commands())) >= 20


@pytest.mark.parametrize(("page", "argv"), list(documented_commands()))
def test_every_documented_command_parses(page, argv):
    """``[--flag]`` is shown as optional: its brackets are dropped and it is parsed as given."""
    argv = [word.strip("[]") for word in argv]
    try:
        args = parse_args(build_parser(), argv)
    except SystemExit as err:
        raise AssertionError(f"{page.relative_to(REPO)}: `dcr-mllm {' '.join(argv)}` does not parse") from err
    assert callable(args.func)


def test_every_command_of_the_cli_has_a_row_in_the_readme():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in sub.choices if f"| `dcr-mllm {name}" not in readme]
    assert not missing, f"README.md's command table lacks {', '.join(missing)}"


def shipped_configs():
    configs = sorted(
        {
            p.resolve()
            for p in [*(REPO / "dcr_mllm" / "configs").glob("*.yaml"), *(REPO / "stages" / "configs").rglob("*.yaml")]
        }
    )
    for path in configs:
        if path.parent.name == "base":  # the shared part of a recipe, not a config; the files inheriting it are here
            continue
        command = "enhance" if path.name.startswith("enhance") else "llava-finetune"
        yield pytest.param(command, path, id=str(path.relative_to(REPO)))


@pytest.mark.parametrize(("command", "path"), list(shipped_configs()))
def test_every_shipped_config_resolves(command, path, capsys):
    code = main([command, "--config", str(path), "--print-config"])
    out, err = capsys.readouterr()
    assert code == 0, f"{path.relative_to(REPO)}: {err.strip()}"
    assert "# " in out and "the number of steps is set by" in out


def test_the_generated_pages_are_what_the_generator_writes_now():
    generate = _generator()
    stale = [
        str(page.relative_to(REPO))
        for page in generate.pages()
        if generate.render(page.read_text(encoding="utf-8")) != page.read_text(encoding="utf-8")
    ]
    assert not stale, f"stale generated blocks in {', '.join(stale)}: run `python docs/generate.py`"


def test_the_generator_notices_a_changed_block():
    generate = _generator()
    page = REPO / "docs" / "results" / "ablation.md"
    text = page.read_text(encoding="utf-8")
    assert "<!-- generated: ablation-metrics -->" in text
    tampered = text.replace("| class zero-shot | 99.8 |", "| class zero-shot | 98.8 |", 1)
    assert tampered != text and generate.render(tampered) == text
    with pytest.raises(KeyError, match="unknown generated block"):
        generate.render("<!-- generated: nonsense -->\n<!-- end generated: nonsense -->\n")


def test_the_bad_input_table_is_a_table():
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    assert "| bad input | commands | the line says |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 4]
    assert len(rows) >= 8


def _table_rows(page: Path, heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading``, header and rule dropped."""
    text = page.read_text(encoding="utf-8").split(heading, 1)[1]
    lines = [line for line in text.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_tower_to_llava_table_is_what_the_configs_and_presets_say():
    """Each row's config makes the preset it names, whose family, size, patch and depth the row states."""
    from dcr_mllm.config import load_config
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.presets.real import BACKBONES

    rows = _table_rows(REPO / "docs" / "real-checkpoints.md", "## Which tower fits which LLaVA")
    assert len(rows) == len(BACKBONES)
    for config, preset, family, size_patch, layers, *_ in rows:
        cfg = load_config(EnhanceConfig, REPO / config.strip("`"))
        backbone = BACKBONES[preset]
        assert cfg.tower == preset, config
        assert (family, size_patch, int(layers)) == (
            backbone.family,
            f"{backbone.image_size} / {backbone.patch_size}",
            backbone.num_layers,
        ), preset


def test_the_documented_llava_data_layout_is_what_stage_two_reads(tmp_path):
    """stage-two.md's record example passes the record checks, and its image path is found under the folder."""
    from PIL import Image

    from dcr_mllm.llava.train.data import check_images, read_records

    page = (REPO / "docs" / "stage-two.md").read_text(encoding="utf-8").split("## Data layout on disk", 1)[1]
    example = re.search(r"```json\n(.*?)```", page, re.S).group(1)
    (tmp_path / "data.json").write_text(example, encoding="utf-8")
    records = read_records(tmp_path / "data.json")
    assert [("image" in r) for r in records] == [True, False]
    (tmp_path / "images" / "00453").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / records[0]["image"])
    check_images(records, tmp_path / "images", "pretrain_data.image_folder")
