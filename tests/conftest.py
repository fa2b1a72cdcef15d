"""Shared fixtures: the tiny preset, built once per test session in a private cache."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share two cores: one thread each, their children too
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{"clip": dir, "siglip": dir, "open_clip": dir, "sd": dir}; preset names resolve to these too."""
    from dcr_mllm.presets import build_tiny_preset

    cache = tmp_path_factory.mktemp("dcr_cache")
    os.environ["DCR_MLLM_CACHE"] = str(cache)
    return build_tiny_preset(cache / "tiny")


@pytest.fixture
def toy_family():
    """A tower family not registered: a variant of CLIP told by its own model_type, as a new HF
    family's module defines it (docs/towers.md); register it with ``towers.registry.registered``."""
    from dcr_mllm.towers import TowerFamily
    from dcr_mllm.towers.hf import HFTower, read_hf_spec

    return TowerFamily(
        name="toy_clip",
        tower_class=HFTower,
        read_spec=read_hf_spec,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        model_type="toy_clip",
        vision_model_type="clip_vision_model",  # LLaVA stores its vision side as a CLIP vision model
        full_class="CLIPModel",
        vision_class="CLIPVisionModel",
        projection_class="CLIPVisionModelWithProjection",
        projection_config_class="CLIPVisionConfig",
    )


@pytest.fixture
def toy_dir(tiny, toy_family, tmp_path):
    """The tiny CLIP saved under the toy family's model_type."""
    import json
    import shutil

    path = shutil.copytree(tiny["clip"], tmp_path / "toy")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": toy_family.model_type}))
    return path


def pytest_sessionstart(session):
    """Compile DeepSpeed's CPU shared-memory op once, up front (about a minute the first time,
    cached in ~/.cache/torch_extensions), so no distributed test pays for it under its timeout."""
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


def pytest_collection_modifyitems(config, items):
    """Files with slow (end-to-end, multi-process) tests run first, each file's tests in their
    order: under ``-n 2 --dist loadfile`` the long files then start at once instead of ending the run."""
    slow_files = {
        item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("distributed")
    }
    items.sort(key=lambda item: item.path not in slow_files)
