"""clip-benchmark: zero-shot classification and retrieval on local data sets in clip_benchmark's own
layouts (a webdataset, flickr30k), read by clip_benchmark; each image's top-1 counted for intervals."""

import io
import json
import tarfile

import pytest
from PIL import Image

from dcr_mllm.cli import main
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower.clip_bench import evaluate_clip_benchmark, read_clip_benchmark
from tests.evaluation.conftest import COLOURS

#: the colours of the classification set's images, in shard order (labels index CLASSES)
CLASSES = ["red", "green", "blue"]
SHARD = ["red", "green", "blue", "blue", "red", "green", "green"]


def png(colour: str, size: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(out, format="PNG")
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def clip_benchmark_root(tmp_path_factory):
    """ROOT/wds-colours (a classification webdataset as clip_benchmark's webdataset_builder writes one)
    and ROOT/flickr30k (images and flickr30k_test_karpathy.txt), as clip_benchmark reads them."""
    root = tmp_path_factory.mktemp("clip_benchmark")
    wds = root / "wds-colours"
    (wds / "test").mkdir(parents=True)
    (wds / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (wds / "zeroshot_classification_templates.txt").write_text("a photo of something {c}.\nan image in {c}.\n")
    (wds / "test" / "nshards.txt").write_text("1\n")
    with tarfile.open(wds / "test" / "0.tar", "w") as tar:
        for index, colour in enumerate(SHARD):
            add(tar, f"s{index:07d}.png", png(colour))
            add(tar, f"s{index:07d}.cls", str(CLASSES.index(colour)).encode())
    flickr = root / "flickr30k"
    flickr.mkdir()
    lines = ["image,caption"]
    for colour in CLASSES:
        Image.new("RGB", (40, 40), COLOURS[colour]).save(flickr / f"{colour}.jpg")
        lines += [f"{colour}.jpg,a square, painted {colour}", f"{colour}.jpg,all of it is {colour}"]
    (flickr / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_tower_that_knows_the_colours_scores_every_image_and_caption(clip_benchmark_root, colour_tower):
    sets = read_clip_benchmark(clip_benchmark_root)
    assert [(s.name, s.task) for s in sets] == [
        ("flickr30k", "zeroshot_retrieval"),
        ("wds/colours", "zeroshot_classification"),
    ]
    result = evaluate_clip_benchmark(colour_tower, sets, batch_size=4)
    assert result.scores["wds/colours/top1"] == 100.0 and result.outcomes["wds/colours/top1"] == [True] * len(SHARD)
    assert result.scores["flickr30k/image_recall@1"] == result.scores["flickr30k/text_recall@1"] == 100.0
    assert "flickr30k/image_recall@5" not in result.scores  # three images: recall@5 is not defined
    assert max(colour_tower.image_batches) <= 4  # the batch size reaches clip_benchmark's loaders


def test_a_tower_that_confuses_two_colours_gets_exactly_those_images_wrong(clip_benchmark_root, colour_tower):
    swapped = type(colour_tower)()
    original = swapped.encode_text
    # "green" reads as red: a green image matches no class prompt, and the first class (red) wins the tie
    swapped.encode_text = lambda texts: original([t.replace("green", "red") for t in texts])
    result = evaluate_clip_benchmark(swapped, read_clip_benchmark(clip_benchmark_root)[1:], batch_size=3)
    assert result.outcomes["wds/colours/top1"] == [c != "green" for c in SHARD]
    assert result.scores["wds/colours/top1"] == pytest.approx(100 * 4 / 7)


def test_eval_tower_compares_towers_on_clip_benchmark_with_intervals_and_paired_differences(
    tiny, clip_benchmark_root, tmp_path, capsys
):
    out = tmp_path / "report"
    towers = ["--tower", f"base={tiny['clip']}", "--tower", f"twin={tiny['clip']}"]
    args = ["eval-tower", *towers, "--benchmark", "clip-benchmark", "--data", str(clip_benchmark_root)]
    assert main([*args, "--output", str(out), "--batch-size", "4"]) == 0
    details = json.loads((out / "details.json").read_text())
    top1 = details["twin"]["wds/colours/top1"]
    assert top1["n"] == len(SHARD) and top1["ci"][0] <= top1["value"] <= top1["ci"][1]
    assert top1["vs_first"] == {"difference": 0.0, "p": 1.0}  # the same tower: no discordant image
    assert details["base"]["wds/colours/top1"]["vs_first"] is None  # the first tower is the reference
    assert details["base"]["flickr30k/image_recall@1"]["ci"] is None  # recall is reported without items
    table = (out / "results.md").read_text()
    assert "+0.0 (p 1.00)" in table and "95 % Wilson interval" in table


def test_a_folder_clip_benchmark_cannot_score_here_is_refused_in_one_line(tmp_path):
    (tmp_path / "winoground").mkdir()
    with pytest.raises(DcrError, match="scores winoground by image_caption_selection"):
        read_clip_benchmark(tmp_path)
    (tmp_path / "winoground").rmdir()
    (tmp_path / "wds-empty").mkdir()
    with pytest.raises(DcrError, match="needs test/nshards.txt"):
        read_clip_benchmark(tmp_path)
