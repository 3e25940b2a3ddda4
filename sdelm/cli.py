"""The ``sdelm`` command line: extract, fit, simulate, re-execute a chapter, build the book.

Exit codes: 0 success, 2 bad input (a usage error, a missing file, an invalid value; the
message says what to do), 1 a failure while running (the traceback's last line is printed).
``sdelm COMMAND --help`` documents each command.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["main"]

#: Exit codes.
OK, FAILURE, BAD_INPUT = 0, 1, 2
MODELS = ("neural", "ou", "random-walk", "lines-of-thought")


class UsageError(ValueError):
    """Bad input from the user: reported without a traceback, exit code 2."""


def _existing(path: str) -> Path:
    result = Path(path)
    if not result.is_file():
        raise UsageError(f"{path} does not exist or is not a file.")
    return result


def _output(path: str, force: bool) -> Path:
    result = Path(path)
    if result.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it.")
    result.parent.mkdir(parents=True, exist_ok=True)
    return result


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    """Return the arguments of :func:`sdelm.extract` that the command line sets."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperatures": args.temperatures,
        "samples_per_prompt": args.samples_per_prompt,
        "layers": args.layers,
        "seed": args.seed,
    }


def _extract(args: argparse.Namespace) -> None:
    import sdelm

    if any(t <= 0 for t in args.temperatures):
        raise UsageError(f"--temperatures must all be > 0, got {args.temperatures}.")
    if args.shard_size:
        _extract_shards(args)
        return
    out = _output(args.out, args.force)
    lm = sdelm.load_lm(args.model, device=args.device, progress=args.progress)
    parts = [
        sdelm.extract(
            lm, sdelm.corpus.prompts(args.n_prompts), progress=args.progress, **_sampling(args)
        )
    ]
    if args.n_passages:
        passages = sdelm.corpus.shakespeare_passages(
            args.n_passages, n_tokens=args.max_new_tokens, seed=args.seed
        )
        parts.append(
            sdelm.encode_texts(
                lm,
                passages,
                max_tokens=args.max_new_tokens,
                layers=args.layers,
                progress=args.progress,
            )
        )
    trajs = sdelm.Trajectories.concat(parts)
    trajs.save(out)
    print(f"wrote {out}: {trajs!r}")


def _extract_shards(args: argparse.Namespace) -> None:
    import sdelm
    from sdelm.shards import extract_shards

    if args.n_passages:
        raise UsageError("A sharded extraction holds generated text only: add --n-passages 0.")
    written = extract_shards(
        args.model,
        sdelm.corpus.prompts(args.n_prompts),
        args.out,
        shard_size=args.shard_size,
        progress=args.progress,
        **_sampling(args),
    )
    print(f"wrote {len(written)} shard(s) to {args.out}")


def _build_model(name: str, dim: int, n_steps: int, seed: int) -> torch.nn.Module:
    import sdelm
    from sdelm.lines_of_thought import LayerLinear

    return {
        "neural": lambda: sdelm.NeuralSDE(dim, time_scale=float(n_steps), seed=seed),
        "ou": lambda: sdelm.baselines.OrnsteinUhlenbeck(dim),
        "random-walk": lambda: sdelm.baselines.RandomWalk(dim),
        "lines-of-thought": lambda: LayerLinear(dim, n_steps),
    }[name]()


def _fit(args: argparse.Namespace) -> None:
    import sdelm

    trajs = sdelm.Trajectories.load(_existing(args.trajectories))
    out = _output(args.out, args.force)
    if args.source != "all":
        trajs = trajs.where(source=args.source)
        if len(trajs) == 0:
            raise UsageError(f"The file has no {args.source!r} sequences.")
    data = sdelm.prepare(trajs, layer=args.layer, dim=args.dim, seed=args.seed)
    model = _build_model(args.model, data.dim, data.train.states.shape[1], args.seed)
    if hasattr(model, "fit_least_squares"):
        model.fit_least_squares(data.train)
    else:
        model = sdelm.fit(
            model,
            data,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            progress=args.progress,
        ).model
    sdelm.save_checkpoint(model.cpu(), out, projection=data.projection)
    scores = {split.name: sdelm.nll(model, split) for split in (data.val, data.test)}
    print(json.dumps({"checkpoint": str(out), "dim": data.dim, "nll": scores}))


def _simulate(args: argparse.Namespace) -> None:
    import sdelm
    from sdelm.files import save_atomically

    model = sdelm.load_checkpoint(_existing(args.checkpoint))
    out = _output(args.out, args.force)
    if args.start_from:
        projection = sdelm.load_projection(args.checkpoint)
        trajs = sdelm.Trajectories.load(_existing(args.start_from))
        starts = sdelm.project(trajs, projection).states[:, 0]
    else:
        starts = torch.zeros(1, model.dim)
    paths = sdelm.simulate(
        model, starts, args.steps, n_paths=args.n_paths, method=args.method, seed=args.seed
    )
    save_atomically({"paths": paths.contiguous()}, out, {"seed": str(args.seed)})
    print(f"wrote {out}: paths of size {tuple(paths.shape)}")


def _book_root(root: str | None) -> Path:
    candidates = [Path(root)] if root else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for candidate in candidates:
        if (candidate / "_toc.yml").is_file() and (candidate / "book").is_dir():
            return candidate
    raise UsageError(
        "No book found (a folder with _toc.yml and book/); run from the repository or pass --root."
    )


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _chapter(args: argparse.Namespace) -> None:
    import jupytext
    import papermill

    root = _book_root(args.root)
    source = root / "book" / f"{args.name}.md"
    if not source.is_file():
        names = sorted(p.stem for p in (root / "book").glob("*.md") if p.stem != "api")
        raise UsageError(f"No chapter {args.name!r}; chapters: {', '.join(names)}.")
    notebook = jupytext.read(source)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise UsageError(f"Chapter {args.name!r} has no parameters cell.")
    known = set()
    for line in tagged[0].source.splitlines():
        name = line.split("=", 1)[0].strip()
        if "=" in line and name.isidentifier():
            known.add(name)
    parameters = {key: _value(value) for key, value in args.parameter}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise UsageError(f"Unknown parameters {unknown}; {args.name} has {sorted(known)}.")
    out = _output(args.out or f"{args.name}.ipynb", args.force)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / f"{args.name}.ipynb"
        jupytext.write(notebook, plain)
        papermill.execute_notebook(
            str(plain),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(root / "book"),
            progress_bar=args.progress,
        )
    print(f"wrote {out}")


def _book(args: argparse.Namespace) -> None:
    root = _book_root(args.root)
    executable = Path(sys.executable).with_name("jupyter-book")
    command = [
        str(executable) if executable.is_file() else "jupyter-book",
        "build",
        str(root),
        "--warningiserror",
        "--keep-going",
        "--path-output",
        str(Path(args.out) if args.out else root),
    ]
    result = subprocess.run(command, check=False)
    if result.returncode:
        raise RuntimeError(f"jupyter-book build exited with {result.returncode}.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdelm",
        description="Text generation by an LLM as a stochastic differential equation.",
        epilog="Exit codes: 0 success, 1 failure while running, 2 bad input.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--force", action="store_true", help="overwrite an existing output")
        sub.add_argument(
            "--no-progress", dest="progress", action="store_false", help="hide progress bars"
        )
        return sub

    extract = command("extract", "Record hidden-state trajectories of generated and human text.")
    extract.add_argument("--out", required=True, help="output .safetensors file")
    extract.add_argument("--model", default="smollm2-135m-instruct", help="name, folder or HF id")
    extract.add_argument("--n-prompts", type=int, default=32)
    extract.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.3])
    extract.add_argument("--samples-per-prompt", type=int, default=2)
    extract.add_argument("--max-new-tokens", type=int, default=48)
    extract.add_argument("--n-passages", type=int, default=16, help="Shakespeare passages")
    extract.add_argument("--layers", type=int, nargs="+", default=None)
    extract.add_argument("--seed", type=int, default=0)
    extract.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    extract.add_argument(
        "--shard-size",
        type=int,
        default=0,
        help="write --out as a resumable folder of shards of this many prompts (generated text "
        "only; under `accelerate launch` or `torchrun` the processes share the shards)",
    )
    extract.set_defaults(run=_extract)

    fit = command("fit", "Fit an SDE to a trajectories file; print validation and test NLL.")
    fit.add_argument("trajectories", help="a file written by `sdelm extract`")
    fit.add_argument("--out", required=True, help="output checkpoint .safetensors")
    fit.add_argument("--model", choices=MODELS, default="neural")
    fit.add_argument("--source", choices=("generated", "human", "all"), default="generated")
    fit.add_argument("--layer", type=int, default=None, help="default: the last recorded")
    fit.add_argument("--dim", type=int, default=16)
    fit.add_argument("--epochs", type=int, default=200)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default="auto")
    fit.set_defaults(run=_fit)

    simulate = command("simulate", "Simulate paths of a fitted SDE checkpoint.")
    simulate.add_argument("checkpoint", help="a file written by `sdelm fit`")
    simulate.add_argument("--out", required=True, help="output .safetensors with 'paths'")
    simulate.add_argument("--steps", type=int, default=47)
    simulate.add_argument("--n-paths", type=int, default=16)
    simulate.add_argument("--method", default="euler", help="euler, milstein or srk")
    simulate.add_argument("--start-from", help="trajectories file: start at their first states")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(run=_simulate)

    chapter = command("chapter", "Re-execute one chapter with papermill, as readers do.")
    chapter.add_argument("name", help="chapter file name without .md, e.g. trajectories")
    chapter.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override a parameter (Python literal), e.g. -p temperatures '[0.5, 1.0]'",
    )
    chapter.add_argument("--out", help="executed notebook (default NAME.ipynb)")
    chapter.add_argument("--root", help="book folder (default: here, else the repository)")
    chapter.set_defaults(run=_chapter)

    book = command("book", "Build the executed book with jupyter-book (warnings are errors).")
    book.add_argument("--root", help="book folder (default: here, else the repository)")
    book.add_argument("--out", help="folder for _build (default: the book folder)")
    book.set_defaults(run=_book)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code.

    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:  # UsageError and the package's own errors
        print(f"sdelm {args.command}: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print(f"sdelm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        print(f"sdelm {args.command} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return FAILURE
    return OK
