"""The enhanced towers the field released (DIVA, GenHancer, DCR), where each is published, in what
format, and the MMVP-VLM its authors report, so they can be converted and compared with ours.

Sources, read at the commits named:

- DIVA (baaivision/DIVA @ d53c668, README.md lines 95-102, the same table as the ``BAAI/DIVA`` model
  card): eight ``.pth`` files on the hub repository ``BAAI/DIVA``. Each is the whole CLIP, image and
  text side, as a plain fp32 state dict in the library that built it (``models/CLIP_bank.py`` lines 11-79:
  OpenAI ``clip.load`` for the OpenAI towers, open_clip ``ViT-*-quickgelu`` for MetaCLIP and DFN,
  open_clip ``ViT-SO400M-14-SigLIP[-384]`` (timm trunk) for SigLIP). Sizes and SHA-256 are the hub's
  LFS pointers (``huggingface.co/BAAI/DIVA/commit/<sha>`` pages); tests check each size against the
  named open_clip model's state dict. The README prints each score with its gain; the base score here
  is the difference (it equals GenHancer's printed originals where the backbones overlap).
- GenHancer (mashijie1028/GenHancer @ d716ba2, README.md lines 81-86): six folders of the hub
  repository ``msj9817/GenHancer``, each a transformers ``CLIPModel``/``SiglipModel`` saved with
  ``save_pretrained(safe_serialization=False)`` (``Continuous/train_OpenAICLIP_stage2_all.py`` lines
  319-320): ``config.json`` and ``pytorch_model.bin``. No revision or digest was found published.
- DCR (boyuh/DCR @ c16d885, README.md lines 147-152): six Google Drive folders, saved as GenHancer's
  (``train_OpenAICLIP_stage2.py`` lines 312-321). Drive has no client here: download by hand and pass
  the folder. DCR prints 19.2 for OpenAI-224's base where the others print 19.3; kept as printed.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcr_mllm.errors import DcrError
from dcr_mllm.presets.real import BACKBONES, Digest

#: state-dict formats convert through ``convert-tower`` (verified forward); "hf" is already transformers'
FORMATS = {
    "openai-clip": "OpenAI clip state dict, whole model (.pth)",
    "open_clip": "open_clip state dict, whole model (.pth)",
    "hf": "transformers folder (pytorch_model.bin)",
}

#: what ``convert-tower --preset`` writes beside the converted tower: which release it is
RECORD = "release.json"

DIVA_HUB = "BAAI/DIVA"
DIVA_REVISION = "23551040851368a84a630e9f9e8bba52c2fa4102"  # newest commit seen; the .pth files date from b949c86
DIVA_TABLE = "baaivision/DIVA README.md lines 95-102 @ d53c668 (score minus its printed gain for the base)"
GENHANCER_HUB = "msj9817/GenHancer"
GENHANCER_TABLE = "mashijie1028/GenHancer README.md lines 81-86 @ d716ba2"
DCR_SHARE = "https://drive.google.com/drive/folders/"
DCR_TABLE = "boyuh/DCR README.md lines 147-152 @ c16d885"


@dataclass(frozen=True)
class ReleasedTower:
    """One released enhanced tower: where it is, what it is, and what its paper reports."""

    name: str
    method: str  # "DIVA", "GenHancer" or "DCR"
    base: str  # the backbone it was tuned from: a preset of presets/real.py, or a hub id
    format: str  # a key of FORMATS
    location: str  # hub id, or the file share's folder address
    path: str  # the file (or folder, for "hf") inside the hub repository; "" for a file share
    mmvp_vlm: float  # MMVP-VLM average the authors report for this tower
    mmvp_vlm_base: float  # ... and for its base
    reported: str  # where those two numbers are printed
    open_clip_model: str = ""  # the state-dict formats' architecture, as open_clip names it
    revision: str | None = None
    digest: Digest | None = None

    @property
    def on_hub(self) -> bool:
        return not self.location.startswith("https://")

    @property
    def base_backbone(self):
        """The base's preset (presets/real.py), or None for a base outside them (DIVA's DFN)."""
        return BACKBONES.get(self.base)


def _diva(name: str, base: str, path: str, model: str, sha256: str, size: int, commit: str, score: float, gain: float):
    digest = Digest(sha256, size, f"huggingface.co/{DIVA_HUB}/commit/{commit} (LFS pointer)")
    return ReleasedTower(
        f"diva-{name}",
        "DIVA",
        base,
        "openai-clip" if name.startswith("clip-") else "open_clip",
        DIVA_HUB,
        path,
        score,
        round(score - gain, 1),
        DIVA_TABLE,
        model,
        DIVA_REVISION,
        digest,
    )


def _genhancer(name: str, folder: str, base: float, score: float) -> ReleasedTower:
    return ReleasedTower(
        f"genhancer-{name}", "GenHancer", name, "hf", GENHANCER_HUB, folder, score, base, GENHANCER_TABLE
    )


def _dcr(name: str, folder_id: str, base: float, score: float) -> ReleasedTower:
    return ReleasedTower(f"dcr-{name}", "DCR", name, "hf", DCR_SHARE + folder_id, "", score, base, DCR_TABLE)


RELEASED = {
    r.name: r
    for r in (
        _diva(
            "clip-l14-224",
            "clip-l14-224",
            "OpenAICLIP/OpenAI-ViT-L-14-224.pth",
            "ViT-L-14-quickgelu",
            "b140e5952f47b7905d3002c159f9b8f83895588c642e47ff8e040d7b6f56dfb5",
            1_710_613_445,
            "517aa4a",
            25.9,
            6.6,
        ),
        _diva(
            "clip-l14-336",
            "clip-l14-336",
            "OpenAICLIP/OpenAI-ViT-L-14-336.pth",
            "ViT-L-14-336-quickgelu",
            "e22a528e68ea902fcd32d0b915a557202882c7d09eff81b395cbad9a3a6ea6a5",
            1_711_924_165,
            "2c2db90",
            25.2,
            5.2,
        ),
        _diva(
            "metaclip-l14",
            "metaclip-l14",
            "MetaCLIP/MetaCLIP-ViT-L-14.pth",
            "ViT-L-14-quickgelu",
            "83febfd0b3ba16af40549309d4377c1a94cef7843bd36115351258d62b78efc5",
            1_710_612_549,
            "763d37f",
            27.4,
            3.7,
        ),
        _diva(
            "metaclip-h14",
            "metaclip-h14",
            "MetaCLIP/MetaCLIP-ViT-H-14.pth",
            "ViT-H-14-quickgelu",
            "df0b16de426b4c505be76f948bd1830516cae475583dd69c0a81605d9ddd767a",
            3_944_663_237,
            "763d37f",
            31.9,
            6.7,
        ),
        _diva(
            "siglip-so400m-224",
            "siglip-so400m-224",
            "SigLIP/SigLIP-ViT-SO-14-224.pth",
            "ViT-SO400M-14-SigLIP",
            "047d91bc2b15442ca1002988538b47a87869fbecbc86fdd768fae2898159b1e5",
            3_509_662_545,
            "b949c86",
            40.7,
            2.9,
        ),
        _diva(
            "siglip-so400m-384",
            "siglip-so400m-384",
            "SigLIP/SigLIP-ViT-SO-14-384.pth",
            "ViT-SO400M-14-SigLIP-384",
            "54bf06936044119ea932aa1679c41d3368e91508947321f9833b54861fecddbe",
            3_512_063_313,
            "b949c86",
            38.5,
            1.5,
        ),
        _diva(
            "dfn-h14-224",
            "apple/DFN5B-CLIP-ViT-H-14",
            "DFN/DFN-ViT-H-14-224.pth",
            "ViT-H-14-quickgelu",
            "dc8389c674f77c47ca491e47db23953414a5c970d5c8d56d1c4b481f77c17786",
            3_944_662_549,
            "0588448",
            43.7,
            4.4,
        ),
        _diva(
            "dfn-h14-378",
            "apple/DFN5B-CLIP-ViT-H-14-378",
            "DFN/DFN-ViT-H-14-378.pth",
            "ViT-H-14-378-quickgelu",
            "d67123506d9b6c4fef06fd00bad28e68a78220167558decf1140eac5f98dcf26",
            3_947_084_309,
            "21bf5e0",
            37.8,
            3.0,
        ),
        _genhancer("clip-l14-224", "OpenAICLIP/clip-vit-large-patch14", 19.3, 31.9),
        _genhancer("clip-l14-336", "OpenAICLIP/clip-vit-large-patch14-336", 20.0, 29.6),
        _genhancer("metaclip-l14", "MetaCLIP/metaclip-l14-fullcc2.5b", 23.7, 31.9),
        _genhancer("metaclip-h14", "MetaCLIP/metaclip-h14-fullcc2.5b", 25.2, 37.0),
        _genhancer("siglip-so400m-224", "SigLIP/siglip-so400m-patch14-224", 37.8, 42.2),
        _genhancer("siglip-so400m-384", "SigLIP/siglip-so400m-patch14-384", 37.0, 40.0),
        _dcr("clip-l14-224", "1yC6orUzrtRVMnhs9ahZzg_JY1VMUbk9L", 19.2, 33.3),
        _dcr("clip-l14-336", "1jMttMBINdNH4mxMxaaukhPBUL2HaMae0", 20.0, 31.1),
        _dcr("metaclip-l14", "1PfiQ5vBE8xwMfLND-TtrGAUHwRGzYfZU", 23.7, 32.6),
        _dcr("metaclip-h14", "1D26dCUpSzR6mln_85PO7qrl83QF0y6Qu", 25.2, 37.8),
        _dcr("siglip-so400m-224", "1ywsrltMuUzWFP7esqipJI4HHFnau2Tvh", 37.8, 43.0),
        _dcr("siglip-so400m-384", "1EqYDIS-DHgcHMNY0d-uZM1P-Jb4nkEsF", 37.0, 42.2),
    )
}


def released_tower(name: str) -> ReleasedTower:
    if name not in RELEASED:
        raise DcrError(f"unknown released tower {name!r}; use one of {', '.join(RELEASED)} (`dcr-mllm presets`)")
    return RELEASED[name]


__all__ = ["FORMATS", "RECORD", "RELEASED", "ReleasedTower", "released_tower"]
