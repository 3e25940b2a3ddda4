"""GPU cost of the pipeline in one prepared run: extraction, fitting and simulation.

1. ``sdelm.extract`` / plain ``model.generate`` for the same sequences, on a model with
   SmolLM2-135M's shape and random weights (a ``LlamaConfig`` with its sizes: nothing is
   downloaded), 256 sequences x 96 tokens, in float32 and in bfloat16. The ratio is what
   recording states, log-probabilities and entropies costs on the device.
2. ``sdelm.fit`` throughput (training transitions per second) at ``batch_size=4096`` and at
   ``batch_size="auto"``, on a 16-dimensional random walk.
3. ``sdelm.simulate``: seconds for 4,096 paths x 48 steps x 4 substeps of a ``NeuralSDE``
   (Euler-Maruyama and Milstein).

Runs alternate (A, B, A, B, ...) and medians are compared. On a GPU the whole script takes
well under 5 minutes. ``--small`` shrinks every size so that the script checks itself on the
CPU in seconds. Usage: ``python benchmarks/gpu.py [--small] [--device auto] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import sdelm
from sdelm.synthetic import as_trajectories


@dataclass(frozen=True)
class Sizes:
    """Everything the run's cost depends on."""

    sequences: int
    tokens: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    fit_paths: int
    fit_epochs: int
    sim_paths: int
    sim_steps: int
    sim_substeps: int


#: SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads of which 3 key/value, vocab 49,152).
FULL = Sizes(256, 96, 576, 1536, 30, 9, 3, 49152, 8192, 3, 4096, 48, 4)
SMALL = Sizes(8, 6, 64, 128, 2, 4, 2, 1024, 64, 2, 64, 6, 2)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def median_times(
    runs: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Warm every run up once, then time them alternately; return the median seconds."""
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(timed(run, device))
    return {name: statistics.median(values) for name, values in seconds.items()}


def tokenizer_of(vocab: int) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer whose vocabulary has ``vocab`` entries, so that every token id a
    random model samples decodes (prompts encode to one token per byte)."""
    specials = ["<pad>", "<eos>", "<bos>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    pairs = (a + b for a in alphabet for b in alphabet)
    entries = specials + alphabet
    entries += [next(pairs) for _ in range(vocab - len(entries))]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(entries)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )


def random_lm(sizes: Sizes, dtype: torch.dtype, device: torch.device) -> sdelm.LM:
    config = LlamaConfig(
        vocab_size=sizes.vocab,
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype=dtype)
    return sdelm.LM(
        model=model.to(device),
        tokenizer=tokenizer_of(sizes.vocab),
        name=f"smollm2-shaped-random-{str(dtype).removeprefix('torch.')}",
        device=device,
    )


def extraction(sizes: Sizes, device: torch.device, repeats: int) -> None:
    samples = 4 if sizes.sequences >= 4 else 1
    prompts = sdelm.corpus.prompts(sizes.sequences // samples)
    for dtype in (torch.float32, torch.bfloat16):
        lm = random_lm(sizes, dtype, device)
        texts = [lm.format_prompt(p.text) for p in prompts for _ in range(samples)]
        encoded = lm.tokenizer(texts, return_tensors="pt", padding=True).to(device)

        def run_extract(lm: sdelm.LM = lm) -> sdelm.Trajectories:
            return sdelm.extract(
                lm,
                prompts,
                max_new_tokens=sizes.tokens,
                samples_per_prompt=samples,
                batch_size=sizes.sequences,
                progress=False,
            )

        def run_generate(lm: sdelm.LM = lm, encoded: dict = encoded) -> None:
            torch.manual_seed(0)
            with torch.inference_mode():
                lm.model.generate(
                    **encoded,
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=sizes.tokens,
                    min_new_tokens=sizes.tokens,
                    pad_token_id=lm.tokenizer.pad_token_id,
                )

        times = median_times({"extract": run_extract, "generate": run_generate}, repeats, device)
        tokens = len(texts) * sizes.tokens
        print(
            f"  {lm.name}: extract {times['extract']:.2f} s "
            f"({tokens / times['extract']:,.0f} tokens/s), generate {times['generate']:.2f} s; "
            f"ratio extract / generate = {times['extract'] / times['generate']:.3f}"
        )
        del lm, encoded
        if device.type == "cuda":
            torch.cuda.empty_cache()


def fitting(sizes: Sizes, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    steps = torch.randn(sizes.fit_paths, 49, 16, generator=generator) * 0.1
    data = sdelm.prepare(
        as_trajectories(steps.cumsum(dim=1), dt=1.0), dim=None, standardise=False, seed=0
    )
    n = data.train.transitions().x.shape[0]
    print(f"  {n:,} training transitions of dimension {data.dim}")
    for batch_size in (4096, "auto"):
        result = sdelm.fit(
            sdelm.NeuralSDE(data.dim, seed=0),
            data,
            epochs=sizes.fit_epochs,
            patience=sizes.fit_epochs,
            batch_size=batch_size,
            device=device,
            progress=False,
        )
        print(
            f"  batch_size={batch_size!r} ({result.batch_size:,}): "
            f"{result.transitions_per_second:,.0f} transitions/s, {result.seconds:.2f} s"
        )


def simulation(sizes: Sizes, device: torch.device, repeats: int) -> None:
    model = sdelm.NeuralSDE(16, seed=0).to(device).eval()
    x0 = torch.randn(sizes.sim_paths, 16, generator=torch.Generator().manual_seed(1))
    runs = {
        method: lambda method=method: sdelm.simulate(
            model, x0, steps=sizes.sim_steps, substeps=sizes.sim_substeps, method=method, seed=0
        )
        for method in ("euler", "milstein")
    }
    for method, seconds in median_times(runs, repeats, device).items():
        print(
            f"  {method}: {seconds:.3f} s for {sizes.sim_paths:,} paths x {sizes.sim_steps} "
            f"steps x {sizes.sim_substeps} substeps"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes: a quick CPU check")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = SMALL if args.small else FULL
    device = sdelm.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )
    start = time.perf_counter()
    print(f"1. extraction, {sizes.sequences} sequences x {sizes.tokens} tokens")
    extraction(sizes, device, args.repeats)
    print("2. fitting throughput")
    fitting(sizes, device)
    print("3. simulation")
    simulation(sizes, device, args.repeats)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
