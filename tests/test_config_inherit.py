"""``inherit:``: a config builds on another file, the child winning key by key; the merged result is
checked as one config, and a broken chain is one error naming the file."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from dcr_mllm.cli import main
from dcr_mllm.config import load_config, read_config_file
from dcr_mllm.errors import ConfigError, DcrError

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Section:
    width: int = 8
    rate: float = 0.1
    targets: list[str] = field(default_factory=lambda: ["q"])


@dataclass
class Recipe:
    name: str = "x"
    seed: int = 0
    section: Section = field(default_factory=Section)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_chain_merges_sections_key_by_key_the_child_winning_and_lists_replaced(tmp_path):
    write(tmp_path / "base" / "root.yaml", "name: root\nseed: 1\nsection:\n  width: 16\n  targets: [a, b]\n")
    write(tmp_path / "base" / "mid.yaml", "inherit: root.yaml\nseed: 2\nsection:\n  rate: 0.5\n")
    leaf = write(tmp_path / "leaf.yaml", "inherit: base/mid.yaml\nsection:\n  targets: [c]\n")
    assert read_config_file(leaf) == {
        "name": "root",
        "seed": 2,
        "section": {"width": 16, "targets": ["c"], "rate": 0.5},
    }
    cfg = load_config(Recipe, leaf, ["seed=3"])
    assert cfg == Recipe(name="root", seed=3, section=Section(width=16, rate=0.5, targets=["c"]))


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "inherit: a.yaml\n"}, "makes a cycle"),
        ({"a.yaml": "inherit: a.yaml\n"}, "makes a cycle"),
        ({"a.yaml": "inherit: missing.yaml\n"}, "inherit: missing.yaml does not exist"),
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "- 1\n- 2\n"}, "(inherited by"),
        ({"a.yaml": "inherit: [b.yaml]\n"}, "is not a path"),
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "seed: 1\nseed: 2\n"}, "written twice"),
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "sed: 1\n"}, "unknown config key 'sed'"),
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "seed: one\n"}, "'seed' must be int"),
    ],
)
def test_a_broken_chain_is_one_error_naming_the_file(tmp_path, files, words):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(DcrError) as err:
        load_config(Recipe, tmp_path / "a.yaml")
    assert words in str(err.value) and "\n" not in str(err.value)
    if isinstance(err.value, ConfigError) and "config key" not in str(err.value):
        assert str(tmp_path) in str(err.value)  # names the file


def test_print_config_shows_the_resolved_chain(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", f"inherit: {REPO / 'stages/configs/llava_13b_lora.yaml'}\nseed: 7\n")
    assert main(["llava-finetune", "--config", str(config), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "inherit" not in printed and printed["seed"] == 7
    assert printed["language_model"] == "lmsys/vicuna-13b-v1.5"  # llava_13b.yaml
    assert printed["lora"]["enabled"] and printed["finetune"]["lr"] == 2.0e-4  # the LoRA variant
    assert printed["finetune"]["deepspeed"] == str(REPO / "stages/deepspeed/zero3.json")  # relative to llava_7b.yaml


def test_a_broken_chain_stops_the_cli_in_one_line(tmp_path, capsys):
    config = write(tmp_path / "c.yaml", "inherit: nowhere.yaml\n")
    assert main(["enhance", "--config", str(config), "--print-config"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "nowhere.yaml does not exist" in err


def test_every_stage_config_inherits_its_base_and_states_only_what_differs():
    """The six backbones share base/enhance.yaml, the six upstream recipes base/upstream.yaml; the LLaVA sizes
    and LoRA variants build on llava_7b.yaml; no file under stages/configs is a link."""
    configs = REPO / "stages" / "configs"
    assert not [p for p in configs.rglob("*") if p.is_symlink()]
    for path in configs.glob("enhance_*.yaml"):
        assert yaml.safe_load(path.read_text())["inherit"] == "base/enhance.yaml", path
    for path in (configs / "upstream").glob("enhance_*.yaml"):
        assert yaml.safe_load(path.read_text())["inherit"] == "../base/upstream.yaml", path
    parents = {"llava_13b": "llava_7b.yaml", "llava_7b_lora": "llava_7b.yaml", "llava_13b_lora": "llava_13b.yaml"}
    for name, parent in parents.items():
        assert yaml.safe_load((configs / f"{name}.yaml").read_text())["inherit"] == parent
    assert max(len(p.read_text().splitlines()) for p in configs.glob("enhance_*.yaml")) < 25


def test_configs_lists_every_shipped_config_with_what_it_is_for(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(REPO)
    assert main(["configs"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    listed = {row.split()[0]: row.split(maxsplit=1)[1] for row in rows}
    shipped = {str(p.relative_to(REPO)) for p in [*(REPO / "dcr_mllm/configs").glob("*.yaml")]}
    shipped |= {str(p.relative_to(REPO)) for p in (REPO / "stages/configs").rglob("*.yaml")}
    assert set(listed) == shipped
    assert listed["stages/configs/enhance_clip_l14_336.yaml"].startswith("Stage one for clip-l14-336")
    assert "(no opening comment)" not in listed.values()
    monkeypatch.chdir(tmp_path)  # as installed: the packaged configs, and where the stage ones are
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert "enhance_tiny.yaml" in out and "stages/configs/enhance" not in out and "repository's root" in out


def test_a_shipped_config_names_its_deepspeed_json_from_any_working_directory(tmp_path, monkeypatch):
    """A file the config depends on is relative to the file that names it, an override's to the working
    directory; outputs stay relative to the working directory."""
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text("{}")
    paper = REPO / "stages" / "configs" / "paper_clip_l14_224"
    enhance = load_config(EnhanceConfig, paper / "enhance.yaml")
    llava = load_config(LlavaTrainConfig, paper / "llava.yaml", ["pretrain.deepspeed=ds.json"])
    assert (
        enhance.projector_stage.deepspeed == enhance.lora_stage.deepspeed == str(REPO / "stages/deepspeed/zero2.json")
    )
    assert llava.finetune.deepspeed == str(REPO / "stages/deepspeed/zero3.json")
    assert Path(enhance.lora_stage.deepspeed).is_file() and Path(llava.finetune.deepspeed).is_file()
    assert Path(llava.pretrain.deepspeed).samefile(tmp_path / "ds.json")
    assert not Path(enhance.output_dir).is_absolute() and not Path(llava.output_dir).is_absolute()


def test_no_two_shipped_configs_with_other_models_share_an_output_dir(monkeypatch):
    """A finished stage is reused only for the inputs it was made from: configs with another tower or
    language model write their own folders (a second tower into the same one would be refused)."""
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig

    monkeypatch.chdir(REPO)
    users: dict[str, set] = {}
    files = [*(REPO / "dcr_mllm/configs").glob("*.yaml"), *(REPO / "stages/configs").rglob("*.yaml")]
    for path in files:
        if path.parent.name == "base":
            continue
        llava = "llava" in path.name
        cfg = load_config(LlavaTrainConfig if llava else EnhanceConfig, path)
        models = (cfg.tower, cfg.language_model) if llava else (cfg.tower, cfg.denoiser)
        users.setdefault(str(Path(cfg.output_dir)), set()).add(models)
    assert "outputs/llava_7b_clip_l14_224" in users  # the 224 px setting has its own folder...
    assert users["outputs/llava_7b_clip_l14_224"] == {("outputs/enhance_clip_l14_224/tower", "lmsys/vicuna-7b-v1.5")}
    assert {folder: models for folder, models in users.items() if len(models) > 1} == {}
