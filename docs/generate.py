"""Write the generated parts of the documentation from the code and the committed results.

    python docs/generate.py            # rewrite every generated block in docs/**/*.md
    python docs/generate.py --check    # exit 1, naming the stale pages, if a block differs

A page holds a block between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``;
everything between the two lines is replaced by ``BLOCKS[NAME]()``. The sources: the config
dataclasses (the key reference), the upstream and recommended stage-one configs (the recipe
table) and ``bench/results/*.json`` (the tiny world's tables), so the pages cannot drift from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = REPO / "bench" / "results"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.S)
ATTRIBUTES = ("shape", "color", "count", "position", "orientation", "size", "background")
CLAIMED = ("color", "count", "position", "orientation")  # claim_mean: what a class-trained tower misses
OBJECTIVES = {
    "base": "base",
    "reconstruction": "reconstruction",
    "naive": "naive",
    "dcr": "DCR",
    "dcr_tokens": "DCR, tokens",
}


def _table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A Markdown table; ``align`` gives one character per column, ``r`` right-aligned, anything else left."""
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = [header, rule, *rows]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _num(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


# --- the config key reference ------------------------------------------------------------------


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: its ``#:`` lines above and its trailing ``#``; a
    field of a base dataclass keeps the base's comment unless the subclass gives one."""
    comments: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        for name, text in _own_comments(klass).items():
            if text or name not in comments:
                comments[name] = text
    return comments


def _own_comments(cls: type) -> dict[str, str]:
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+): [^=]+?(?:=(.*?))?(?:\s+#\s*(.*))?$", stripped)
        if match and not stripped.startswith(("def ", "class ", "return ")):
            text = " ".join([*pending, match.group(3) or ""]).strip()
            # a comment on the field's first line only; default_factory lambdas spanning lines keep theirs
            comments[match.group(1)] = text
        pending = []
    return comments


def _plain_type(hint: object) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_plain_type(a) for a in typing.get_args(hint))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_plain_type(a) for a in typing.get_args(hint))}]"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _type_name(hint: object) -> str:
    return f"`{_plain_type(hint)}`"


def _default_text(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix('...').strip()}`"


def _key_rows(cls: type, instance: object | None, prefix: str = "") -> list[list[str]]:
    from dcr_mllm.config import tagged_kinds

    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    rows = []
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if instance is not None:
            value = getattr(instance, field.name)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = dataclasses.MISSING
        hint = hints[field.name]
        kinds = tagged_kinds(hint)
        if kinds:
            kind_list = ", ".join(f"{cls.__name__} (`{name}`)" for name, cls in kinds.items())
            rows.append([f"`{key}`", f"section, by `name`: {kind_list}", "", comments.get(field.name, "")])
            rows += _tagged_rows(kinds, value, key + ".")
            continue
        if dataclasses.is_dataclass(hint):
            note = comments.get(field.name, "")
            rows.append([f"`{key}`", f"section ({hint.__name__})", "", note])
            rows += _key_rows(hint, value, key + ".")
            continue
        if (
            typing.get_origin(hint) is list
            and typing.get_args(hint)
            and dataclasses.is_dataclass(typing.get_args(hint)[0])
        ):
            item = typing.get_args(hint)[0]
            rows.append([f"`{key}`", f"list of {item.__name__}", _default_text([]), comments.get(field.name, "")])
            rows += _key_rows(item, None, key + "[].")
            continue
        default = "**required**" if value is dataclasses.MISSING else _default_text(value)
        rows.append([f"`{key}`", _type_name(hint), default, comments.get(field.name, "")])
    return rows


def _tagged_rows(kinds: dict[str, type], default: object, prefix: str) -> list[list[str]]:
    """Every kind's keys once, in the order they first appear; a key not every kind reads names those that do."""
    names = list(kinds)
    by_key: dict[str, tuple[list[str], list[str]]] = {}
    for name, cls in kinds.items():
        for row in _key_rows(cls, default if type(default) is cls else None, prefix):
            by_key.setdefault(row[0], (row, []))[1].append(name)
    rows = []
    for key, (row, readers) in by_key.items():
        if key == f"`{prefix}name`":
            row = [row[0], _type_name(typing.Literal[tuple(names)]), *row[2:]]
        elif len(readers) < len(names) and "." not in key.strip("`").removeprefix(prefix):
            row = [*row[:3], f"*{', '.join(readers)} only.* {row[3]}".strip()]
        rows.append(row)
    return rows


def config_reference() -> str:
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig

    out = []
    for title, cls, commands in (
        ("Stage one", EnhanceConfig, "`dcr-mllm enhance`"),
        ("Stage two", LlavaTrainConfig, "`dcr-mllm llava-pretrain` and `dcr-mllm llava-finetune`"),
    ):
        module = f"{cls.__module__.replace('.', '/')}.py"
        out.append(f"### {title}: `{cls.__name__}` ({commands}; `{module}`)\n\n")
        out.append(_table(["key", "type", "default", "meaning"], _key_rows(cls, None)))
        out.append("\n")
    return "".join(out)


# --- upstream's recipe against ours --------------------------------------------------------------


def _inherited(path: Path) -> list[Path]:
    """``path`` and the files it inherits from (``inherit:``), the farthest first."""
    parent = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("inherit")
    return [*_inherited(path.parent / parent), path] if parent else [path]


def _set_keys(path: Path) -> list[str]:
    """Every dotted key a config file sets, itself first, then through the files it inherits."""
    files = reversed(_inherited(path))
    keys = (key for file in files for key in _flatten(yaml.safe_load(file.read_text(encoding="utf-8"))))
    return [key for key in dict.fromkeys(keys) if key != "inherit"]


def _commented_keys(path: Path) -> dict[str, str]:
    """Every dotted key a config file sets, itself or through the files it inherits, with the comment on the line that sets it."""
    comments, stack = {}, []
    for line in (row for file in _inherited(path) for row in file.read_text(encoding="utf-8").splitlines()):
        match = re.match(r"(\s*)([\w]+):(.*)$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
        rest = match.group(3)
        comments[".".join(k for _, k in stack)] = rest.split("  # ", 1)[1].strip() if "  # " in rest else ""
    return comments


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _repo_relative(flat: dict[str, object]) -> dict[str, object]:
    """Loaded paths into the clone (absolute, such as a DeepSpeed JSON's) as the repository names them."""
    root = f"{REPO}/"
    return {key: v.removeprefix(root) if isinstance(v, str) else v for key, v in flat.items()}


def upstream_recipe(backbone: str = "clip_l14_224") -> str:
    from dcr_mllm.config import load_config, to_dict
    from dcr_mllm.enhance.config import EnhanceConfig

    configs = REPO / "stages" / "configs"
    upstream_path, ours_path = configs / "upstream" / f"enhance_{backbone}.yaml", configs / f"enhance_{backbone}.yaml"
    upstream, ours = (
        _repo_relative(_flatten(to_dict(load_config(EnhanceConfig, p)))) for p in (upstream_path, ours_path)
    )
    set_keys = [*dict.fromkeys(key for path in (upstream_path, ours_path) for key in _set_keys(path))]
    up_notes, our_notes = _commented_keys(upstream_path), _commented_keys(ours_path)
    rows = []
    for key in set_keys:
        if key == "output_dir" or key.endswith("shards"):
            continue
        theirs, mine = upstream[key], ours[key]
        rows.append(
            [
                f"`{key}`",
                _default_text(theirs),
                up_notes.get(key, ""),
                "same" if theirs == mine else f"**{_default_text(mine)}**",
                our_notes.get(key, ""),
            ]
        )
    head = (
        f"`{upstream_path.relative_to(REPO)}` (upstream's recipe, value for value) against `{ours_path.relative_to(REPO)}` "
        "(the recommended settings), every key either file sets, as each loads (defaults filled in). The upstream "
        "source column is the upstream config's own comment, citing boyuh/DCR at commit c16d885 (file:line); "
        '"why" is the recommended config\'s comment on that key.\n\n'
    )
    return head + _table(["key", "upstream", "upstream's source", "ours", "why"], rows)


# --- the tiny world's results --------------------------------------------------------------------


def _mean_std(entry: dict, base: bool) -> str:
    return _num(entry["mean"]) if base else f"{_num(entry['mean'])} ± {_num(entry['std'])}"


def ablation_metrics(source: str = "ablation_world.json", chosen: bool = False) -> str:
    """The ablation's metrics table from ``bench/results/SOURCE``: the last LoRA step's towers, or
    (``chosen``) those of the steps chosen on validation."""
    data = _load(source)
    metrics = data["selected"]["metrics"] if chosen else data["metrics"]
    rows_spec = [
        ("colour / count / position / orientation, global embedding (`claim_mean`)", "probe_global/claim_mean"),
        ("the same, feature layer −2", "probe_layer/claim_mean"),
        ("fine-attribute probe, global embedding (mean of 6)", "probe_global/fine_mean"),
        ("fine-attribute probe, feature layer −2 (mean of 6)", "probe_layer/fine_mean"),
        ("class probe (D-Ability)", "class/probe"),
        ("class zero-shot", "class/zero_shot"),
        ("world pairs, mean", "pairs/mean"),
        ("background, global embedding", "probe_global/background"),
    ]
    rows = []
    for label, key in rows_spec:
        values = {name: metrics[name][key] for name in OBJECTIVES}
        best = max((n for n in OBJECTIVES if n != "base"), key=lambda n: values[n]["mean"])
        above = round(values[best]["mean"], 1) > round(values["base"]["mean"], 1)
        cells = []
        for name in OBJECTIVES:
            text = _mean_std(values[name], name == "base")
            cells.append(f"**{text}**" if name == best and above else text)
        rows.append([label, *cells])
    rows.append(
        [
            "position, global / feature layer",
            *(
                f"{_num(metrics[n]['probe_global/position']['mean'])} / {_num(metrics[n]['probe_layer/position']['mean'])}"
                for n in OBJECTIVES
            ),
        ]
    )
    seeds = data["setup"]["seeds"]
    which = (
        f"each run's step chosen on validation (`{data['selected']['rule']}`; steps per seed: "
        + "; ".join(f"{OBJECTIVES[n]} {', '.join(map(str, v))}" for n, v in data["selected"]["steps"].items())
        + "), "
        if chosen
        else ""
    )
    head = (
        f"{seeds} seeds, {which}%, mean ± std over seeds (`bench/results/{source}`); bold: the best objective "
        "where it is above base.\n\n"
    )
    return head + _table(["metric", *OBJECTIVES.values()], rows)


def headline() -> str:
    metrics = _load("ablation_world.json")["metrics"]
    rows = []
    for label, key in (
        ("missed attributes (`claim_mean`), global embedding", "probe_global/claim_mean"),
        ("the same, feature layer −2", "probe_layer/claim_mean"),
        ("class zero-shot", "class/zero_shot"),
    ):
        rows.append([label, *(_mean_std(metrics[n][key], n == "base") for n in ("base", "dcr", "dcr_tokens"))])
    return _table(["tower (%)", "base", "DCR, global condition", "DCR, patch tokens"], rows, "lrrr")


def ablation_checks() -> str:
    data = _load("ablation_world.json")
    rows = [[claim, "yes" if held else "**no**"] for claim, held in data["checks"].items()]
    return _table(["the paper's claim, as the ablation checks it", "holds"], rows)


def ablation_curves() -> str:
    curves = _load("ablation_world.json")["curves"]
    steps = curves["dcr"]["probe_global/claim_mean"]["steps"]
    columns = [(n, "probe_global/claim_mean") for n in ("reconstruction", "naive", "dcr", "dcr_tokens")]
    columns += [(n, "class/zero_shot") for n in ("dcr", "dcr_tokens")]
    rows = []
    for i, step in enumerate(steps):
        cells = []
        for name, key in columns:
            curve = curves[name][key]
            cells.append(_num(curve["mean"][i]) if step == 0 else f"{_num(curve['mean'][i])} ± {_num(curve['std'][i])}")
        rows.append([str(step), *cells])
    header = [
        "LoRA step",
        "`claim_mean`, global: reconstruction",
        "naive",
        "DCR",
        "DCR, tokens",
        "zero-shot: DCR",
        "DCR, tokens",
    ]
    return _table(header, rows, "r" * len(header))


def ablation_effects(source: str = "ablation_world.json") -> str:
    """Each objective against base and each DCR form against naive over seeds, from the per-seed
    metrics of ``bench/results/SOURCE`` (the ablation's own ``effects``, for results written before it had them)."""
    from dcr_mllm.enhance.ablation_report import effect_table
    from dcr_mllm.enhance.world_runs import contrasts, effects

    metrics = _load(source)["metrics"]
    lines = effect_table(effects(metrics, contrasts(list(metrics))))[3:]  # the page gives its own heading
    seeds = _load(source)["setup"]["seeds"]
    return f"{seeds} seeds (`bench/results/{source}`). " + "\n".join(lines) + "\n"


def premise_table(source: str = "ablation_world.json", world: str = "The packaged world's") -> str:
    premise = _load(source)["premise"]
    rows = []
    for name, a in premise["attributes"].items():
        rows.append(
            [
                name,
                _num(a["base/probe_global"]),
                _num(a["reference/probe_global"]),
                _num(a["base/probe_layer"]),
                _num(a["reference/probe_layer"]),
                f"{100 * a['carried_global']:.1f} %",
                f"{100 * a['carried_tokens']:.1f} %",
                "**yes**" if a["teachable_global"] else "no",
                "**yes**" if a["teachable_tokens"] else "no",
            ]
        )
    head = (
        f"{world} premise as the ablation measured it (`bench/results/{source}`, `premise`; "
        f"the whole caption gains {premise['caption_gain']:.3f} MSE over the empty prompt).\n\n"
    )
    header = [
        "attribute",
        "base global",
        "reference global",
        "base layer −2",
        "reference layer −2",
        "carried, global form",
        "carried, token form",
        "teachable: global",
        "teachable: tokens",
    ]
    return head + _table(header, rows, "lrrrrrrll")


def llava_search() -> str:
    data = _load("llava_world_search.json")
    rows = []
    for run in data["runs"]:
        args, acc = run["args"], run["accuracy"]
        kinds = args["kinds"].split(",")
        setting = (
            f"{args['lm']}; {', '.join(kinds)} × {args['turns']} per image; {args['steps']} steps at lr {args['lr']}"
            + (f"; {args['text_steps']} text steps first" if args.get("text_steps") else "")
            + ("; LM trained in pretraining" if args.get("pre_lm") else "")
            + (f"; {args['images']} images" if args.get("images") not in (None, 4000) else "")
        )
        cells = [acc.get(k) if k in kinds else None for k in ("open", "yes_no", "choice")]
        rows.append(
            [
                f"`{run['name']}`",
                setting,
                *("" if c is None else _num(c) for c in cells),
                str(run["seconds"]),
                run.get("cpu", "Xeon"),
            ]
        )
    probes = ", ".join(f"{k} {v}" for k, v in data["probe_layer_base"].items())
    head = f"{data['what']}. Accuracy (%) by kind of question; the base tower's feature-layer probes: {probes}.\n\n"
    return head + _table(["run", "setting", "open", "yes/no", "choice", "seconds", "CPU"], rows, "llrrrrl")


# --- the bad-input cases -------------------------------------------------------------------------

BAD_INPUT_TESTS = REPO / "tests" / "test_bad_input.py"


def bad_input_cases() -> str:
    """Every case of ``tests/test_bad_input.py``'s ``CASES`` table: the command, the input and a
    phrase the one-line error must contain (read from the test's source, so the page is the test)."""
    import ast

    tree = ast.parse(BAD_INPUT_TESTS.read_text(encoding="utf-8"))
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CASES" for t in node.targets)
    )
    rows = []
    for key, value in zip(table.keys, table.values):
        command, case = ast.literal_eval(key).split("/", 1)
        phrase = value.elts[1]
        said = ast.literal_eval(phrase) if isinstance(phrase, ast.Constant) else ast.unparse(phrase)
        rows.append([f"`{command}`", case.replace("-", " "), f"`{said}`"])
    return f"{len(rows)} cases.\n\n" + _table(["command", "bad input", "the line contains"], rows)


def released_towers() -> str:
    """The released enhanced towers as `dcr-mllm presets` lists them."""
    from dcr_mllm.presets.listing import RELEASED_HEADER, released_rows

    return _table(list(RELEASED_HEADER), [list(row) for row in released_rows()])


COMPARE_WORLD = (
    "dcr-mllm eval-tower --tower base=world-clip --tower dcr=outputs/enhance_world/tower "
    "--benchmark world=outputs/world/eval --benchmark fine-grained --pairs-per-attribute 20 --image-size 32 "
    "--output bench/results/compare_world"
)


def compare_world() -> str:
    """The tiny world's comparison table, as eval-tower wrote it, with the command that made it."""
    table = (RESULTS / "compare_world" / "results.md").read_text(encoding="utf-8").split("\n", 2)[2]
    return f"```bash\nbash stages/run_all.sh   # the default run: its enhanced tower\n{COMPARE_WORLD}\n```\n\n{table}"


def calibration() -> str:
    """The calibration's report (``stages/calibrate.sh``), from ``bench/results/calibration.json``."""
    from dcr_mllm.pipeline.calibrate import report

    return report(_load("calibration.json")).split("\n", 2)[2]


def budget_curve() -> str:
    """The budget curve's report (``stages/budget.sh``), from ``bench/results/budget_world.json``."""
    from dcr_mllm.enhance.budget import report

    return report(_load("budget_world.json")).split("\n", 2)[2]


BLOCKS: dict[str, Callable[[], str]] = {
    "config-reference": config_reference,
    "upstream-recipe": upstream_recipe,
    "ablation-metrics": ablation_metrics,
    "ablation-checks": ablation_checks,
    "headline": headline,
    "ablation-curves": ablation_curves,
    "premise": premise_table,
    "premise-one-background": functools.partial(
        premise_table, "ablation_world_gray.json", "The one-background world's (`--one-background gray`)"
    ),
    "ablation-effects": ablation_effects,
    "ablation-one-background": functools.partial(ablation_metrics, "ablation_world_gray.json"),
    "ablation-one-background-effects": functools.partial(ablation_effects, "ablation_world_gray.json"),
    "ablation-one-background-chosen": functools.partial(ablation_metrics, "ablation_world_gray.json", chosen=True),
    "llava-search": llava_search,
    "bad-input-cases": bad_input_cases,
    "released-towers": released_towers,
    "compare-world": compare_world,
    "calibration": calibration,
    "budget-curve": budget_curve,
}


def render(text: str, cache: dict[str, str] | None = None) -> str:
    """``text`` with every generated block written anew; an unknown block name is an error."""
    cache = {} if cache is None else cache

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise KeyError(f"unknown generated block {name!r}; known: {', '.join(BLOCKS)}")
        if name not in cache:
            cache[name] = BLOCKS[name]()
        return match.group(1) + cache[name] + match.group(4)

    return BLOCK.sub(fill, text)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page's generated block is stale"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    cache: dict[str, str] = {}
    stale = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = render(text, cache)
        if new != text:
            stale.append(page.relative_to(REPO))
            if not args.check:
                page.write_text(new, encoding="utf-8")
    verb = "stale" if args.check else "written"
    print("\n".join(f"{verb}: {p}" for p in stale) or "every generated block is up to date")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
