"""Extraction speed as ratios measured side by side in one process.

1. ``sdelm.extract`` / plain ``model.generate`` for the same model, prompts, number of tokens
   and sampling (target <= 1.10): what recording states, log-probabilities and entropies costs.
2. one-prompt-at-a-time / batched ``sdelm.extract`` for the same 16 sequences (target >= 3).
3. ``sdelm.extract`` with a temperature control read from an SDE at every step
   (:class:`sdelm.control.DiffusionTemperature`) / plain ``sdelm.extract`` (target <= 1.10):
   what controlled generation costs.
4. ``batch_size=16`` / ``batch_size=64`` (the default) for ``--many`` sequences (128, as in the
   book's largest extractions; target >= 1.5): why the default is 64 on a CPU too.
5. ``sdelm.rescore`` (reading the ``--many`` sequences again for their untempered
   log-probabilities) / ``sdelm.extract`` of them (target >= 0.5): what recording
   ``untempered_logprobs`` while sampling saves every chapter that scores a run.
6. ``sdelm.branch`` (every branch of a prefix in one row, a tree mask over one KV cache) /
   the same branch tokens read one branch per row from the prefix's KV cache repeated
   (target <= 0.75; the states agree to 1e-4): the branching chapter's experiment.

Runs alternate (A, B, A, B, ...) and the medians are compared, so that a slow moment of a noisy
machine hits both sides. Usage: ``python benchmarks/extraction.py [--repeats 3] [--tokens 32]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import DynamicCache

import sdelm
from sdelm.generation import prefix_positions
from sdelm.lm import cache_keyword


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--many", type=int, default=128, help="sequences of test 4 (even)")
    args = parser.parse_args()

    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    lm = sdelm.load_lm(args.model, device=args.device)
    prompts = sdelm.corpus.prompts(args.sequences)
    print(lm)

    def run_extract(batch_size: int, control=None) -> sdelm.Trajectories:
        return sdelm.extract(
            lm,
            prompts,
            max_new_tokens=args.tokens,
            temperatures=[1.0],
            batch_size=batch_size,
            seed=0,
            control=control,
            progress=False,
        )

    warm_up = run_extract(args.sequences)
    steps = warm_up.n_steps  # the token count to match
    data = sdelm.prepare(warm_up, dim=16, split=(0.5, 0.25, 0.25))
    law = sdelm.control.DiffusionTemperature.calibrated(
        sdelm.NeuralSDE(16, seed=0), data.projection, warm_up
    )
    texts = [lm.format_prompt(p.text) for p in prompts]
    encoded = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        lm.device
    )

    def run_generate() -> None:
        torch.manual_seed(0)
        with torch.inference_mode():
            lm.model.generate(
                **encoded,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=steps,
                min_new_tokens=steps,
                pad_token_id=lm.tokenizer.pad_token_id,
            )

    run_generate()  # warm-up
    extract_s, generate_s, single_s, batched_s, controlled_s = [], [], [], [], []
    for _ in range(args.repeats):
        extract_s.append(timed(lambda: run_extract(args.sequences)))
        generate_s.append(timed(run_generate))
        single_s.append(timed(lambda: run_extract(1)))
        batched_s.append(timed(lambda: run_extract(args.sequences)))
        controlled_s.append(timed(lambda: run_extract(args.sequences, law)))

    def median(values: list[float]) -> float:
        return statistics.median(values)

    ratio = median(extract_s) / median(generate_s)
    speedup = median(single_s) / median(batched_s)
    print(f"{args.sequences} sequences x {steps} tokens, {args.repeats} alternating repeats")
    print(
        f"extract (batch {args.sequences}): {median(extract_s):.2f} s; "
        f"model.generate: {median(generate_s):.2f} s"
    )
    print(f"ratio extract / generate = {ratio:.3f} (target <= 1.10)")
    print(f"one at a time: {median(single_s):.2f} s; batched: {median(batched_s):.2f} s")
    print(f"speed-up batched vs one at a time = {speedup:.2f}x (target >= 3)")
    control_ratio = median(controlled_s) / median(batched_s)
    print(f"with a diffusion temperature control: {median(controlled_s):.2f} s")
    print(f"ratio controlled / plain extract = {control_ratio:.3f} (target <= 1.10)")

    many = sdelm.corpus.prompts(args.many // 2)  # two temperatures

    def run_many(batch_size: int) -> sdelm.Trajectories:
        return sdelm.extract(lm, many, max_new_tokens=args.tokens, temperatures=[0.7, 1.3],
                             batch_size=batch_size, seed=0, progress=False)  # fmt: skip

    by_size: dict[int, list[float]] = {16: [], 64: []}
    rescore_s: list[float] = []
    sampled = run_many(64)
    for _ in range(args.repeats):
        for size, seconds in by_size.items():
            seconds.append(timed(lambda size=size: run_many(size)))
        rescore_s.append(timed(lambda: sdelm.rescore(lm, sampled)))
    small, default = median(by_size[16]), median(by_size[64])
    print(f"{args.many} sequences: batch 16 {small:.2f} s; batch 64 {default:.2f} s")
    print(f"speed-up batch 64 vs 16 = {small / default:.2f}x (target >= 1.5)")
    reread = median(rescore_s) / default
    print(f"reading them again (rescore): {median(rescore_s):.2f} s")
    print(f"ratio rescore / extract = {reread:.2f} (target >= 0.5; the record costs nothing)")

    positions = prefix_positions(warm_up, [3, 11, 23])
    branches = branch_all(lm, warm_up, positions)
    branch_s, rows_s = [], []
    for _ in range(args.repeats):
        branch_s.append(timed(lambda: branch_all(lm, warm_up, positions)))
        rows_s.append(timed(lambda: branch_rows(lm, warm_up, branches)))
    last = branches.states[:, :, :, -1].flatten(0, 2)
    agree = torch.allclose(branch_rows(lm, warm_up, branches), last, atol=1e-4)
    one_row = median(branch_s)
    print(
        f"{len(positions)} prefixes x 96 branches: one row {one_row:.2f} s; "
        f"a row per branch {median(rows_s):.2f} s; states agree: {agree}"
    )
    print(f"ratio one row / a row per branch = {one_row / median(rows_s):.2f} (target <= 0.75)")


def branch_all(lm: sdelm.LM, trajs: sdelm.Trajectories, positions: list) -> sdelm.Branches:
    """``sdelm.branch`` of ``positions``: 32 branches at three temperatures each."""
    return sdelm.branch(lm, trajs, positions, n_branches=32, temperatures=[0.5, 0.9, 1.3])


@torch.inference_mode()
def branch_rows(lm: sdelm.LM, trajs: sdelm.Trajectories, branches: sdelm.Branches) -> torch.Tensor:
    """The reference: each prefix read once, its KV cache repeated for one row per branch.

    Returns the last layer's states of every branch, size (prefixes · 3 · 32, hidden).
    """
    chat, body, out = trajs.meta["chat"], lm.model.base_model, []
    for p, row in branches.prefixes.iterrows():
        prompt = lm.format_prompt(row["prompt"], chat=chat)
        ids = lm.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]
        ids = ids + trajs.tokens[row["sequence"], : row["step"] + 1].tolist()
        cache = DynamicCache(config=lm.model.config)
        with_cache = {cache_keyword(body): cache}
        body(input_ids=torch.tensor([ids], device=lm.device), **with_cache)
        drawn = branches.tokens[p].flatten().to(lm.device)
        cache.batch_repeat_interleave(len(drawn))
        read = body(
            input_ids=drawn[:, None],
            position_ids=torch.full((len(drawn), 1), len(ids), device=lm.device),
            **with_cache,
        )
        out.append(read.last_hidden_state[:, -1].float().cpu())
    return torch.cat(out)


if __name__ == "__main__":
    main()
