"""How fast can the world's LLaVA learn its questions? A search harness for the LLaVA schedule.

The product's LLaVA (``build_llava``: the tower, the projector, the tiny Llama) and its tokenisation
(``llava.train.data.tokenize``, LLaVA-1.5's vicuna_v1 and plain prompts), trained on the frozen tower's
feature layer computed once (LLaVA-1.5 freezes the tower, so this is the same function, about
twice as fast), on fresh questions about the conversation images each step; scored on the
``world_local`` questions of 300 held-out images (seed 2), an answer right when greedy decoding
gives every one of its tokens. One thread, so two variants run side by side on two cores.

    python bench/llava_world_search.py --lm ~/.cache/dcr_mllm/tiny/llama --steps 3000 --out out.json

Results of the search: bench/results/llava_world_search.json (docs/results/default-run.md).
"""

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
from dcr_mllm.llava.build import build_llava
from dcr_mllm.llava.train.data import IGNORE_INDEX, tokenize
from dcr_mllm.world.conversations import CAPTION_PROMPT, KINDS, world_qa_rows, world_question
from dcr_mllm.world.scenes import WORLD_VALUES, detailed_caption, render, sample_scenes

p = argparse.ArgumentParser()
p.add_argument("--tower", default="world-clip")
p.add_argument("--lm", required=True)
p.add_argument("--images", type=int, default=4000)
p.add_argument("--turns", type=int, default=3)
p.add_argument("--kinds", default="open,yes_no,choice")
p.add_argument("--pre-steps", type=int, default=118)
p.add_argument("--pre-lr", type=float, default=1e-2)
p.add_argument("--pre-lm", action="store_true", help="train the LM in pretraining too")
p.add_argument("--text-steps", type=int, default=0)
p.add_argument("--text-lr", type=float, default=3e-3)
p.add_argument("--steps", type=int, default=472)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--eval-images", type=int, default=300)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
p.add_argument("--cache", default="outputs/llava_search", help="where the tower features are kept")
a = p.parse_args()
t0 = time.time()
torch.manual_seed(a.seed)
from dcr_mllm.towers import resolve_tower_path

model, processor = build_llava(resolve_tower_path(a.tower), a.lm)
tok = processor.tokenizer
S = model.config.image_seq_length
image_id = model.config.image_token_index
vision = model.model.vision_tower
layer = model.config.vision_feature_layer
ip = processor.image_processor

Path(a.cache).mkdir(parents=True, exist_ok=True)
cache = Path(a.cache) / (f"feat_{Path(str(a.tower)).name}_{a.images}.pt")


def features(images):
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 256):
            px = ip(images[i : i + 256], return_tensors="pt")["pixel_values"]
            h = vision(px, output_hidden_states=True).hidden_states[layer]
            out.append(h[:, 1:] if model.config.vision_feature_select_strategy == "default" else h)
    return torch.cat(out)


scenes = sample_scenes(a.images, 13)
if cache.exists():
    train_feat = torch.load(cache, weights_only=True)
else:
    train_feat = features([render(s) for s in scenes])
    torch.save(train_feat, cache)
rows = world_qa_rows(a.eval_images, 2)
ecache = Path(a.cache) / (f"efeat_{Path(str(a.tower)).name}_{a.eval_images}.pt")
if ecache.exists():
    eval_feat = torch.load(ecache, weights_only=True)
else:
    eval_feat = features([r["image"] for r in rows[:: len(WORLD_VALUES) * len(KINDS)]])
    torch.save(eval_feat, ecache)
print(f"features {time.time() - t0:.0f}s", flush=True)

kinds = a.kinds.split(",")
rng = random.Random(a.seed)


def finetune_record(i):
    conv = []
    for t, attr in enumerate(rng.sample(list(WORLD_VALUES), a.turns)):
        qa = world_question(scenes[i], attr, rng.choice(kinds), rng)
        conv += [
            {"from": "human", "value": ("<image>\n" if t == 0 else "") + qa["question"]},
            {"from": "gpt", "value": qa["answer"]},
        ]
    return {"image": "x", "conversations": conv}


def text_record(i):
    conv = []
    for t, attr in enumerate(rng.sample(list(WORLD_VALUES), a.turns)):
        qa = world_question(scenes[i], attr, rng.choice(kinds), rng)
        conv += [
            {"from": "human", "value": (detailed_caption(scenes[i]) + "\n" if t == 0 else "") + qa["question"]},
            {"from": "gpt", "value": qa["answer"]},
        ]
    return {"conversations": conv}


def pretrain_record(i):
    return {
        "image": "x",
        "conversations": [
            {"from": "human", "value": CAPTION_PROMPT},
            {"from": "gpt", "value": detailed_caption(scenes[i])},
        ],
    }


lm = model.model.language_model
proj = model.model.multi_modal_projector
embed = lm.get_input_embeddings()


def forward(ids_list, lab_list, feats):
    L = max(map(len, ids_list))
    ids = torch.full((len(ids_list), L), tok.pad_token_id)
    labels = torch.full((len(ids_list), L), IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for j, (x, y) in enumerate(zip(ids_list, lab_list)):
        ids[j, : len(x)] = torch.tensor(x)
        labels[j, : len(y)] = torch.tensor(y)
        mask[j, : len(x)] = 1
    emb = embed(ids)
    pos = ids == image_id
    if pos.any():
        img = proj(feats).to(emb.dtype)
        emb = emb.masked_scatter(pos.unsqueeze(-1), img[pos.any(1)].reshape(-1, emb.shape[-1]))
    h = lm(inputs_embeds=emb, attention_mask=mask).last_hidden_state
    return model.lm_head(h), labels


def train(stage, steps, lr, params, make):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, int(0.03 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    order = []
    for step in range(steps):
        if len(order) < a.batch:
            order += rng.sample(range(a.images), a.images)
        b, order = order[: a.batch], order[a.batch :]
        toks = [tokenize(make(i), "plain" if stage == "pre" else "vicuna_v1", tok, S, 512) for i in b]
        logits, labels = forward([t[0] for t in toks], [t[1] for t in toks], train_feat[b])
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"{stage} {step} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)


for prm in model.parameters():
    prm.requires_grad_(False)
if a.text_steps:
    ps = list(lm.parameters()) + list(model.lm_head.parameters())
    for prm in ps:
        prm.requires_grad_(True)
    train("text", a.text_steps, a.text_lr, ps, text_record)
    for prm in ps:
        prm.requires_grad_(False)
if a.pre_steps:
    ps = list(proj.parameters()) + (list(lm.parameters()) + list(model.lm_head.parameters()) if a.pre_lm else [])
    for prm in ps:
        prm.requires_grad_(True)
    train("pre", a.pre_steps, a.pre_lr, ps, pretrain_record)
ps = list(proj.parameters()) + list(lm.parameters()) + list(model.lm_head.parameters())
for prm in ps:
    prm.requires_grad_(True)
train("ft", a.steps, a.lr, ps, finetune_record)

# eval: greedy first answer token
model.eval()
res = {}
with torch.no_grad():
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        recs = [
            {
                "image": "x",
                "conversations": [
                    {"from": "human", "value": "<image>\n" + r["question"]},
                    {"from": "gpt", "value": r["answer"]},
                ],
            }
            for r in chunk
        ]
        toks = [tokenize(rc, "vicuna_v1", tok, S, 512) for rc in recs]
        feats = eval_feat[[int(r["question_id"][:5]) for r in chunk]]
        logits, labels = forward([t[0] for t in toks], [t[1] for t in toks], feats)
        for j, (r, (_x, y)) in enumerate(zip(chunk, toks)):
            ks = [k for k, v in enumerate(y) if v != IGNORE_INDEX]
            ok = all(logits[j, k - 1].argmax().item() == y[k] for k in ks)
            for key in (r["kind"], r["attribute"], f"{r['attribute']}/{r['kind']}", "all"):
                res.setdefault(key, []).append(ok)
acc = {k: round(100 * sum(v) / len(v), 1) for k, v in res.items()}
print(
    json.dumps({k: acc[k] for k in ["all", "open", "yes_no", "choice", *list(WORLD_VALUES)]}),
    f"{time.time() - t0:.0f}s",
    flush=True,
)
with open(a.out, "w") as out_file:
    json.dump({"args": vars(a), "acc": acc, "seconds": time.time() - t0}, out_file, indent=1)
