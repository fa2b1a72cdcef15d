"""Fixtures for the evaluation tests: a synthetic MMVP-VLM directory and a tower whose answers are known."""

import pytest
import torch

from dcr_mllm.evaluation.tower import write_mmvp_vlm

# Images of these solid colours embed as these vectors under ColourTower.
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(autouse=True)
def one_thread():
    """The per-pair references run thousands of tiny ops; on a busy shared CPU, OpenMP's thread
    synchronisation costs milliseconds per op, so these tests run on one thread (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mmvp_dir(tmp_path_factory):
    """270 statements at 48 px: larger than the tiny towers' 32 px, so their processors resize."""
    return write_mmvp_vlm(tmp_path_factory.mktemp("mmvp") / "MMVP_VLM", image_size=48, seed=0)


class ColourTower:
    """A stand-in tower whose answers are known: an image embeds as its mean colour, a text as the
    colour named by its last word (gray for any other word). It records every batch it encodes."""

    def __init__(self):
        self.mean = torch.zeros(1)
        self.image_batches, self.text_batches = [], []

    def preprocess(self, images):
        return torch.stack(
            [torch.tensor(image.resize((1, 1)).getpixel((0, 0)), dtype=torch.float32) / 255 for image in images]
        )

    def global_embedding(self, pixels):
        self.image_batches.append(len(pixels))
        return pixels

    def encode_text(self, texts):
        self.text_batches.append(len(texts))
        return torch.tensor(
            [COLOURS.get(text.rstrip(".").split()[-1], (1, 1, 1)) for text in texts], dtype=torch.float32
        )

    dtype = torch.float32

    def require_text_side(self):
        pass

    def logit_scale(self):
        return 100.0

    def logit_bias(self):
        return 0.0


@pytest.fixture
def colour_tower():
    return ColourTower()
