"""The checkpoint commands: ``swap-tower`` (a tower into an existing LLaVA checkpoint, streaming,
verified), ``convert-llava`` (an original LLaVA checkpoint to llava-hf) and ``convert-tower`` (an
OpenAI clip / open_clip tower to HF, verified against the source's forward)."""

from __future__ import annotations

import argparse

from dcr_mllm.arguments import add_allow_pickle
from dcr_mllm.errors import DcrError


def register(sub: argparse._SubParsersAction) -> None:
    swap_parser = sub.add_parser(
        "swap-tower",
        help="put a tower into an existing LLaVA checkpoint (llava-hf LLaVA-1.5/NeXT/"
        "OneVision, or original LLaVA-1.5/1.6), streaming; verified",
    )
    swap_parser.add_argument(
        "--llava", required=True, metavar="SRC", help="the LLaVA checkpoint directory (never modified)"
    )
    swap_parser.add_argument("--tower", required=True, help="a HF CLIP/MetaCLIP/SigLIP tower directory or preset name")
    swap_parser.add_argument(
        "--output", required=True, metavar="DST", help="directory to write (refused if it exists, unless --force)"
    )
    swap_parser.add_argument("--dry-run", action="store_true", help="check and print what would change; write nothing")
    swap_parser.add_argument(
        "--force", action="store_true", help="replace an existing DST (only once the new one is written and verified)"
    )
    swap_parser.add_argument(
        "--allow-family-change",
        action="store_true",
        help="swap a SigLIP tower into a CLIP-based LLaVA-1.5 checkpoint or back; the projector must then be retrained",
    )
    add_allow_pickle(swap_parser)
    swap_parser.set_defaults(func=swap_tower)

    convert_parser = sub.add_parser(
        "convert-llava",
        help="convert an original LLaVA checkpoint (mm_vision_tower) to "
        "llava-hf, as transformers' scripts do (LLaVA-1.5 -> llava, LLaVA-1.6 -> llava_next)",
    )
    convert_parser.add_argument(
        "--input", required=True, metavar="ORIGINAL", help="the original LLaVA checkpoint directory"
    )
    convert_parser.add_argument(
        "--output", required=True, metavar="HF_DIR", help="directory to write (refused if it exists, unless --force)"
    )
    convert_parser.add_argument("--force", action="store_true", help="replace an existing HF_DIR")
    add_allow_pickle(convert_parser)
    convert_parser.set_defaults(func=convert_llava)

    tower_parser = sub.add_parser(
        "convert-tower",
        help="convert a tower in OpenAI clip's or open_clip's state-dict layout (ViT; timm SigLIP), or a released "
        "DIVA / GenHancer / DCR tower (--preset), to HF CLIP/SigLIP, checked against the source model's forward",
    )
    tower_parser.add_argument(
        "src",
        metavar="SRC",
        nargs="?",
        help="the state dict: .safetensors, or .pth/.pt/.bin pickle; with --preset, the released file or folder "
        "(default: fetched from the hub where the preset is there)",
    )
    tower_parser.add_argument(
        "--preset",
        metavar="NAME",
        help="a released tower (diva-*, genhancer-*, dcr-*; `dcr-mllm presets`): its digest and base are checked "
        "and its architecture named",
    )
    tower_parser.add_argument(
        "--output", required=True, metavar="DIR", help="the HF tower directory to write (refused if it exists)"
    )
    tower_parser.add_argument(
        "--model",
        metavar="NAME",
        help="the source's open_clip model name (e.g. ViT-L-14-quickgelu) or config JSON; default: read from "
        "the shapes, with heads = width / 64",
    )
    tower_parser.add_argument(
        "--gelu",
        action="store_true",
        help="without --model: the ViT uses nn.GELU (LAION open_clip models), not OpenAI's QuickGELU",
    )
    tower_parser.add_argument(
        "--tokenizer",
        metavar="BASE_DIR",
        help="keep the text side too (zero-shot, MMVP-VLM): a folder with the base tower's CLIP tokenizer files "
        "(e.g. its hub download), copied beside the converted tower",
    )
    tower_parser.add_argument(
        "--force", action="store_true", help="replace an existing DIR once the new one is verified"
    )
    add_allow_pickle(tower_parser)
    tower_parser.set_defaults(func=convert_tower)


def swap_tower(args: argparse.Namespace) -> None:
    from dcr_mllm.llava.checkpoints.swap import swap_tower

    report = swap_tower(
        args.llava,
        args.tower,
        args.output,
        force=args.force,
        dry_run=args.dry_run,
        allow_family_change=args.allow_family_change,
        allow_pickle=args.allow_pickle,
    )
    print("\n".join(report.lines()))


def convert_llava(args: argparse.Namespace) -> None:
    from dcr_mllm.llava.checkpoints.convert import convert_llava

    print("\n".join(convert_llava(args.input, args.output, force=args.force, allow_pickle=args.allow_pickle).lines()))


def convert_tower(args: argparse.Namespace) -> None:
    shared = {"tokenizer": args.tokenizer, "allow_pickle": args.allow_pickle, "force": args.force}
    if args.preset:
        from dcr_mllm.towers.release import convert_release

        if args.model or args.gelu:
            raise DcrError(f"--preset {args.preset} names the architecture; leave out --model and --gelu")
        report = convert_release(args.preset, args.src, args.output, **shared)
    else:
        from dcr_mllm.towers.convert import convert_tower

        if args.src is None:
            raise DcrError("convert-tower needs SRC (a state-dict file), or --preset NAME for a released tower")
        report = convert_tower(args.src, args.output, model=args.model, gelu=args.gelu, **shared)
    print("\n".join(report.lines()))
