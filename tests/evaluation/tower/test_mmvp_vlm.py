"""MMVP-VLM: parity with a per-pair transcription of the official script, known answers, bad input."""

import csv
import shutil

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower import CATEGORIES, evaluate_mmvp_vlm, ground_truth, read_benchmark
from dcr_mllm.towers import load_tower

FAMILIES = ["clip", "siglip", "open_clip"]


def family_logits_per_text(family, tower_dir):
    """(two PIL images, one text) -> [1, 2] logits, through the family's own model, processor and tokenizer."""
    if family == "open_clip":
        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(tower_dir))
        tokenizer = open_clip.get_tokenizer("local-dir:" + str(tower_dir))

        def forward(images, text):
            image_features, text_features, scale = model(
                torch.stack([preprocess(i) for i in images]), tokenizer([text])
            )[:3]
            return scale * text_features @ image_features.T

        return forward

    model, tokenizer, processor = (
        AutoModel.from_pretrained(tower_dir),
        AutoTokenizer.from_pretrained(tower_dir),
        AutoImageProcessor.from_pretrained(tower_dir),
    )

    def forward(images, text):
        pixels = processor(images=images, return_tensors="pt").pixel_values
        if family == "siglip":  # max-length padding, no attention mask, as SigLIP was trained
            return model(
                input_ids=tokenizer([text], padding="max_length", truncation=True, return_tensors="pt").input_ids,
                pixel_values=pixels,
            ).logits_per_text
        return model(**tokenizer([text], return_tensors="pt"), pixel_values=pixels).logits_per_text

    return forward


def reference_mmvp_vlm(logits_per_text, benchmark_dir):
    """The official evaluate_vlm.py (tsb0601/MMVP scripts/evaluate_vlm.py:35-91), transcribed: per
    pair (lines 38-47), both images opened from the first row's type folder (49-50), "a photo of " +
    statement (52-53), one call per statement with both images and a softmax over them (63-68),
    img1 when its probability is above 0.5 (70-74), odd ids' ground truth img1 (76-77), 15 pairs per
    category (82-85) and percentages over num_pairs // 9 (90-91). ``logits_per_text(images, text)``
    stands for its preprocess + ``model(imgs, text)``."""
    categories = list(CATEGORIES)
    pair_accuracies = {category: 0 for category in categories}
    num_pairs, rows = 0, []
    with open(benchmark_dir / "Questions.csv") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            qid1, qtype1, statement1 = row
            qid2, _, statement2 = next(reader)
            qid1, qid2 = int(qid1), int(qid2)
            images = [Image.open(benchmark_dir / "MLLM_VLM Images" / qtype1 / f"{qid}.jpg") for qid in (qid1, qid2)]
            with torch.no_grad():
                probs1 = logits_per_text(images, "a photo of " + statement1).softmax(dim=-1)
                probs2 = logits_per_text(images, "a photo of " + statement2).softmax(dim=-1)
            img1_score1, img1_score2 = probs1[0][0].item(), probs2[0][0].item()
            pred1 = "img1" if img1_score1 > 0.5 else "img2"
            pred2 = "img1" if img1_score2 > 0.5 else "img2"
            gt1 = "img1" if qid1 % 2 == 1 else "img2"
            gt2 = "img1" if qid2 % 2 == 1 else "img2"
            rows.append((qid1, qid2, pred1, pred2, gt1, gt2, img1_score1, img1_score2))
            if pred1 == gt1 and pred2 == gt2:
                pair_accuracies[categories[num_pairs // 15]] += 1
            num_pairs += 1
    return {c: n / (num_pairs // len(categories)) * 100 for c, n in pair_accuracies.items()}, rows


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_evaluator_matches_the_per_pair_transcription(tiny, mmvp_dir, family):
    result = evaluate_mmvp_vlm(load_tower(tiny[family]), mmvp_dir, batch_size=32)
    expected, rows = reference_mmvp_vlm(family_logits_per_text(family, tiny[family]), mmvp_dir)
    assert [result.scores[c] for c in CATEGORIES] == pytest.approx([expected[c] for c in CATEGORIES], abs=1e-9)
    assert result.scores["average"] == pytest.approx(sum(expected.values()) / 9)
    ours = [tuple(p[k] for k in ("qid1", "qid2", "pred1", "pred2", "gt1", "gt2")) for p in result.predictions]
    assert ours == [row[:6] for row in rows]
    torch.testing.assert_close(
        torch.tensor([(p["img1_score1"], p["img1_score2"]) for p in result.predictions]),
        torch.tensor([row[6:] for row in rows]),
        atol=1e-5,
        rtol=0,
    )


def clip_preprocess(n_px, mean, std):
    """The ``clip`` package's ``_transform(n_px)`` (openai/CLIP clip/clip.py:79-86: Resize(n_px,
    BICUBIC), CenterCrop(n_px), convert("RGB"), ToTensor(), Normalize), spelled out in PIL: torchvision
    resizes a PIL image's short side to n_px and its long side to int(n_px * long / short) with PIL's
    bicubic, crops at round((size - n_px) / 2), and ToTensor divides by 255."""

    def transform(image):
        w, h = image.size
        size = (n_px, int(n_px * h / w)) if w <= h else (int(n_px * w / h), n_px)
        image = image.resize(size, Image.BICUBIC)
        left, top = round((image.width - n_px) / 2.0), round((image.height - n_px) / 2.0)
        image = image.crop((left, top, left + n_px, top + n_px)).convert("RGB")
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)

    return transform


def official_logits_per_text(tower_dir):
    """evaluate_vlm.py's model call (lines 55-65): ``clip.load``'s preprocess on each image, then
    logits_per_text of the CLIP model. The tower's own tokenizer stands in for ``clip.tokenize``
    (the same BPE for OpenAI CLIP; the ``clip`` package is not installed)."""
    model, tokenizer = AutoModel.from_pretrained(tower_dir), AutoTokenizer.from_pretrained(tower_dir)
    config = AutoImageProcessor.from_pretrained(tower_dir)
    preprocess = clip_preprocess(model.config.vision_config.image_size, config.image_mean, config.image_std)

    def forward(images, text):
        imgs = torch.stack([preprocess(image) for image in images])
        return model(**tokenizer([text], return_tensors="pt"), pixel_values=imgs).logits_per_text

    return forward


@pytest.fixture(scope="module")
def oblong_mmvp_dir(mmvp_dir, tmp_path_factory):
    """The synthetic benchmark with wide, tall and greyscale images, so that resizing, cropping and the
    late RGB conversion all matter."""
    root = tmp_path_factory.mktemp("oblong") / "MMVP_VLM"
    shutil.copytree(mmvp_dir, root)
    for i, path in enumerate(sorted((root / "MLLM_VLM Images").rglob("*.jpg"))):
        with Image.open(path) as image:
            image = image.resize(((61, 45), (38, 57), (50, 41))[i % 3], Image.BILINEAR)
        (image.convert("L") if i % 5 == 0 else image).save(path, quality=95)
    return root


def test_official_preprocessing_matches_the_official_script(tiny, oblong_mmvp_dir):
    tower = load_tower(tiny["clip"])
    result = evaluate_mmvp_vlm(tower, oblong_mmvp_dir, batch_size=32, preprocess="official")
    expected, rows = reference_mmvp_vlm(official_logits_per_text(tiny["clip"]), oblong_mmvp_dir)
    assert [result.scores[c] for c in CATEGORIES] == pytest.approx([expected[c] for c in CATEGORIES], abs=1e-9)
    assert [tuple(p[k] for k in ("qid1", "qid2", "pred1", "pred2")) for p in result.predictions] == [
        row[:4] for row in rows
    ]
    official_scores = torch.tensor([(p["img1_score1"], p["img1_score2"]) for p in result.predictions])
    torch.testing.assert_close(official_scores, torch.tensor([row[6:] for row in rows]), atol=1e-5, rtol=0)
    default = evaluate_mmvp_vlm(tower, oblong_mmvp_dir, batch_size=32)
    tower_scores = torch.tensor([(p["img1_score1"], p["img1_score2"]) for p in default.predictions])
    assert (official_scores - tower_scores).abs().max() > 1e-4, "the two preprocessings see different pixels"


def test_official_preprocessing_is_for_mmvp_vlm_only(tiny, tmp_path):
    from dcr_mllm.evaluation.tower import evaluate_towers

    with pytest.raises(DcrError, match="--preprocess official reproduces the official MMVP-VLM script"):
        evaluate_towers({"t": tiny["clip"]}, "fine-grained", tmp_path / "out", preprocess="official")
    with pytest.raises(DcrError, match="preprocess 'pil': use one of tower, official"):
        evaluate_towers({"t": tiny["clip"]}, "fine-grained", tmp_path / "out", preprocess="pil")
    assert not (tmp_path / "out").exists()


def write_hand_made(root, right_per_category):
    """A directory of solid-colour images whose right pairs are known: in category c the last
    ``right_per_category[c]`` pairs are right; the others are swapped (both statements wrong), a
    tie (two identical images: the protocol gives ``img2``, so only statement 2 is right) or half right."""
    images = root / "MLLM_VLM Images"
    rows = [("Question ID", "Type", "Statement")]
    qid = 1
    for c, right in enumerate(right_per_category):
        qtype = f"type{c}"
        (images / qtype).mkdir(parents=True)
        for k in range(15):
            kind = "right" if k >= 15 - right else ("swapped", "tie", "half")[k % 3]
            image1, image2, statement1, statement2 = {
                "right": ("red", "blue", "red", "blue"),
                "swapped": ("blue", "red", "red", "blue"),
                "tie": ("green", "green", "green", "green"),
                "half": ("red", "red", "red", "blue"),
            }[kind]
            Image.new("RGB", (8, 8), image1).save(images / qtype / f"{qid}.jpg", quality=100)
            Image.new("RGB", (8, 8), image2).save(images / qtype / f"{qid + 1}.jpg", quality=100)
            # the second row's type is not where its image lives: the official script uses the first row's
            rows += [(qid, qtype, statement1), (qid + 1, "not a folder", statement2)]
            qid += 2
    with open(root / "Questions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def test_known_answers_odd_even_ground_truth_and_category_boundaries(tmp_path, colour_tower):
    right = [1, 2, 3, 4, 5, 6, 7, 8, 15]
    result = evaluate_mmvp_vlm(colour_tower, write_hand_made(tmp_path, right))
    assert list(result.scores) == [*CATEGORIES, "average"]
    for category, n in zip(CATEGORIES, right):
        assert result.scores[category] == pytest.approx(100 * n / 15)
    assert result.scores["average"] == pytest.approx(100 * sum(right) / 135)
    assert ground_truth(1) == "img1" and ground_truth(2) == "img2" and ground_truth(135) == "img1"
    tie = next(p for p in result.predictions if p["qid1"] == 3)  # pair k=1 of category 0 is a tie
    assert tie["img1_score1"] == 0.5 and (tie["pred1"], tie["pred2"]) == ("img2", "img2")
    assert (tie["gt1"], tie["gt2"]) == ("img1", "img2")


def test_each_image_and_text_is_encoded_once_in_batches(mmvp_dir, colour_tower):
    evaluate_mmvp_vlm(colour_tower, mmvp_dir, batch_size=64)
    assert colour_tower.image_batches == [64, 64, 64, 64, 14] and colour_tower.text_batches == [64, 64, 64, 64, 14]


def rewrite_rows(root, edit):
    path = root / "Questions.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def drop_a_field(rows):
    rows[5].pop()


def spell_an_id(rows):
    rows[4][0] = "four"


def swap_two_rows(rows):
    rows[3], rows[4] = rows[4], rows[3]


def drop_the_last_row(rows):
    rows.pop()


@pytest.mark.parametrize(
    "edit, message",
    [
        (drop_a_field, r"Questions.csv line 6: expected 3 fields \(question id, type, statement\), got 2"),
        (spell_an_id, r"Questions.csv line 5: question id 'four' is not a positive integer"),
        (swap_two_rows, r"Questions.csv lines 4-5: question ids 4, 3 do not form a pair"),
        (drop_the_last_row, r"has 269 statement rows; MMVP-VLM has 270"),
    ],
)
def test_a_malformed_csv_is_named(mmvp_dir, tmp_path, edit, message):
    root = shutil.copytree(mmvp_dir, tmp_path / "copy")
    rewrite_rows(root, edit)
    with pytest.raises(DcrError, match=message):
        read_benchmark(root)


def test_a_missing_image_or_csv_is_named(mmvp_dir, tmp_path):
    root = shutil.copytree(mmvp_dir, tmp_path / "copy")
    (root / "MLLM_VLM Images" / "Color" / "152.jpg").unlink()
    with pytest.raises(DcrError, match=r"missing image .*Color/152.jpg \(question 152, Questions.csv line 153\)"):
        read_benchmark(root)
    with pytest.raises(DcrError, match=r"no Questions.csv in .*: point --data at the MMVP-VLM directory"):
        read_benchmark(tmp_path)


def test_an_undecodable_image_is_named(mmvp_dir, tmp_path, colour_tower):
    root = shutil.copytree(mmvp_dir, tmp_path / "copy")
    (root / "MLLM_VLM Images" / "Text" / "211.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DcrError, match=r"cannot read image .*Text/211.jpg"):
        evaluate_mmvp_vlm(colour_tower, root)


def test_synthetic_directory_has_the_official_layout(mmvp_dir):
    pairs = read_benchmark(mmvp_dir)
    assert len(pairs) == 135
    assert [p.category for p in pairs[14:16]] == [CATEGORIES[0], CATEGORIES[1]]
    assert all(p.first.text != p.second.text for p in pairs)
    assert (pairs[0].first.qid, pairs[0].second.qid, pairs[-1].second.qid) == (1, 2, 270)
