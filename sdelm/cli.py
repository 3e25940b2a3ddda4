"""The ``sdelm`` command line: extract, fit, simulate, re-execute a chapter, build the book.

Exit codes: 0 success, 2 bad input (a usage error, a missing or damaged file, an invalid value,
a model that cannot be loaded; one line says what to do), 1 a failure while running (one line:
the error's type and message). ``sdelm COMMAND --help`` documents each command.

Every argument is checked before the language model is loaded or any work starts, and an output
is only replaced once the new result is complete. ``sdelm chapter`` checks ``-p`` overrides
against the chapter's ``parameters`` cell (known names; the same type as the default); when the
chapter's code then raises ``ValueError`` or ``TypeError`` with overridden parameters, the
values are taken to be at fault (exit 2), since the default run does not raise.
"""

from __future__ import annotations

import argparse
import ast
import contextvars
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sdelm.book.chapter import (
    ANY,
    ChapterError,
    book_root,
    parameter_defaults,
    source_path,
)
from sdelm.book.execution import execute

if TYPE_CHECKING:
    import torch

__all__ = ["main"]

#: Exit codes.
OK, FAILURE, BAD_INPUT = 0, 1, 2
MODELS = ("neural", "neural-correlated", "ou", "var", "random-walk", "lines-of-thought")
#: Errors that mean the input is at fault (besides sdelm.lm.LMLoadError): exit code 2.
BAD_INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


#: The longest ``--out`` file name, in bytes: its temporary sibling
#: (``.NAME.HOST.PID.RANDOM.tmp``, :mod:`sdelm.files`) must fit in 255.
MAX_OUT_NAME = 160


class UsageError(ValueError):
    """Bad input from the user: reported without a traceback, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line and exit with code 2."""
        self.exit(BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """Return an argparse type: an integer in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text!r}")
        return value

    return parse


_count, _natural, _seed = _integer(1), _integer(0), _integer(0, 2**63 - 1)


def _temperature(text: str) -> float:
    """Argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _existing(path: str) -> Path:
    result = Path(path)
    if not result.is_file():
        raise UsageError(f"{path} does not exist or is not a file.")
    return result


def _output(path: str, force: bool) -> Path:
    """Check an output file's path before any work: not a folder, no file in its way.

    Nothing is created: the file and its folders are written once the result is complete.

    Args:
        path: The ``--out`` argument.
        force: Whether an existing file may be replaced.

    Returns:
        The path.

    Raises:
        UsageError: If the path is a folder, lies under a file or in a folder not writable
            here, has too long a name, is not a regular file, or exists without ``force``.

    """
    from sdelm.files import never_replace

    result = Path(path)
    if result.is_dir():
        raise UsageError(f"--out {path} is a folder; name a file to write.")
    if result.exists() and not result.is_file():
        raise UsageError(
            f"--out {path} is not a regular file (a device, pipe or socket); sdelm replaces "
            "only regular files, even with --force. Name a file to write."
        )
    if result.exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite it.")
    folder = next(parent for parent in result.parents if parent.exists())
    if not folder.is_dir():
        raise UsageError(f"--out {path} lies under {folder}, which is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: the folder {folder} is not writable here.")
    if len(result.name.encode()) > MAX_OUT_NAME:
        raise UsageError(
            f"--out names a file of {len(result.name.encode())} bytes; at most {MAX_OUT_NAME} "
            "fit, with the temporary name written first, in a file system's 255."
        )
    if not force:  # another writer may take the name meanwhile: the write then refuses
        never_replace(result)
    return result


def _device(name: str) -> torch.device:
    """Resolve ``--device`` and check that it works here, before anything is loaded onto it.

    Args:
        name: The ``--device`` argument (``auto``, ``cpu``, ``cuda``, ``cuda:1``...).

    Returns:
        The device.

    Raises:
        UsageError: If it is not a device, or not one this machine's PyTorch can use.

    """
    import torch

    from sdelm.devices import resolve_device

    try:
        device = resolve_device(name)
    except ValueError as error:
        raise UsageError(f"--device: {error}") from error
    try:
        torch.empty(0, device=device)
    except RuntimeError as error:  # e.g. mps, or a GPU index that is not present
        reason = str(error).splitlines()[0].split(". ")[0][:160]  # torch's first sentence
        raise UsageError(
            f"--device {name} is not usable here ({reason}); use auto, cpu or cuda."
        ) from error
    return device


def _sampling(args: argparse.Namespace) -> dict[str, object]:
    """Return the arguments of :func:`sdelm.extract` that the command line sets."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperatures": args.temperatures,
        "samples_per_prompt": args.samples_per_prompt,
        "layers": args.layers,
        "seed": args.seed,
    }


def _prompts(n: int) -> list:
    """Return the first ``n`` bundled prompts; the error names ``--n-prompts``."""
    import sdelm

    try:
        return sdelm.corpus.prompts(n)
    except ValueError as error:
        raise UsageError(f"--n-prompts: {error}") from error


def _extract(args: argparse.Namespace) -> None:
    import sdelm

    if args.shard_size:
        _extract_shards(args)
        return
    device = _device(args.device)
    out = _output(args.out, args.force)
    prompts = _prompts(args.n_prompts)
    passages = (
        sdelm.corpus.shakespeare_passages(
            args.n_passages, n_tokens=args.max_new_tokens, seed=args.seed
        )
        if args.n_passages
        else []
    )
    lm = sdelm.load_lm(args.model, device=device, progress=args.progress)
    parts = [sdelm.extract(lm, prompts, progress=args.progress, **_sampling(args))]
    if passages:
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
    from sdelm.generation.shards import extract_shards

    if args.n_passages:
        raise UsageError("A sharded extraction holds generated text only: add --n-passages 0.")
    device = _device(args.device)
    written = extract_shards(
        args.model,
        _prompts(args.n_prompts),
        args.out,
        shard_size=args.shard_size,
        device=device.type,
        replace=args.force,
        progress=args.progress,
        **_sampling(args),
    )
    print(f"wrote {len(written)} shard(s) to {args.out}")


def _build_model(name: str, dim: int, n_steps: int, seed: int) -> torch.nn.Module:
    from sdelm.models.zoo import ZOO

    return ZOO[name].build(dim, seed, float(n_steps), 128, 2)


def _fit(args: argparse.Namespace) -> None:
    import sdelm

    device = _device(args.device)
    out = _output(args.out, args.force)
    trajs = sdelm.Trajectories.load(args.trajectories)  # a file or a folder of shards
    if args.layer is not None and args.layer not in trajs.layers:
        raise UsageError(
            f"--layer {args.layer} was not recorded in {args.trajectories}; it has layers "
            f"{list(trajs.layers)}."
        )
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
            device=device,
            progress=args.progress,
        ).model
    scores = {split.name: sdelm.nll(model, split) for split in (data.val, data.test)}
    if not all(math.isfinite(score) for score in scores.values()):
        raise UsageError(
            f"The fitted {args.model} model's held-out NLL is {scores}, not finite: it "
            f"describes nothing, so {out} was not written. Check the data (their time step "
            "and states), or fit with other settings."
        )
    sdelm.save_checkpoint(model.cpu(), out, projection=data.projection)
    print(json.dumps({"checkpoint": str(out), "dim": data.dim, "nll": scores}))


def _simulate(args: argparse.Namespace) -> None:
    import torch

    import sdelm
    from sdelm.files import save_atomically

    checkpoint = _existing(args.checkpoint)
    out = _output(args.out, args.force)
    model = sdelm.load_checkpoint(checkpoint)
    if args.start_from:
        projection = sdelm.load_projection(checkpoint)
        trajs = sdelm.Trajectories.load(args.start_from)  # a file or a folder of shards
        if len(trajs) == 0 or trajs.n_steps == 0:
            raise UsageError(f"--start-from {args.start_from} holds no sequence to start from.")
        empty = (~trajs.mask.bool().any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise UsageError(
                f"--start-from {args.start_from}: sequences {empty[:5]} have no valid step to "
                "start from; drop them (Trajectories.where or indexing) and save the rest."
            )
        starts = sdelm.project(trajs, projection).states[:, 0]  # valid steps come first
    else:
        starts = torch.zeros(1, model.dim)
    paths = sdelm.simulate(
        model, starts, args.steps, n_paths=args.n_paths, method=args.method, seed=args.seed
    )
    save_atomically({"paths": paths.contiguous()}, out, {"seed": str(args.seed)})
    print(f"wrote {out}: paths of size {tuple(paths.shape)}")


def _book_root(root: str | None) -> Path:
    try:
        return book_root(root)
    except ChapterError as error:
        raise UsageError(f"{error} (--root)") from None


def _value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _fits(value: object, default: object) -> bool:
    """Return whether an override has the type of a parameter's default.

    ``None`` (or a non-literal) default takes anything, a float takes an int, and a list or
    tuple takes a list or tuple whose items each fit one of the default's items.
    """
    if default is None or default is ANY:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and (
            not default or all(any(_fits(item, d) for d in default) for item in value)
        )
    return isinstance(value, type(default))


def _check_parameters(
    parameters: dict[str, object], defaults: dict[str, object], chapter: str
) -> None:
    """Check ``-p`` overrides against a chapter's parameters cell.

    Args:
        parameters: The overrides, by name.
        defaults: The cell's defaults, from :func:`sdelm.book.chapter.parameter_defaults`.
        chapter: The chapter's name, for the message.

    Raises:
        UsageError: On an unknown name, or a value whose type differs from the default's.

    """
    unknown = sorted(set(parameters) - set(defaults))
    if unknown:
        raise UsageError(f"Unknown parameters {unknown}; {chapter} has {sorted(defaults)}.")
    wrong = [
        f"-p {name} expects a value like its default {defaults[name]!r} "
        f"({type(defaults[name]).__name__}), got {value!r} ({type(value).__name__})"
        for name, value in parameters.items()
        if not _fits(value, defaults[name])
    ]
    if wrong:
        raise UsageError("; ".join(wrong) + " (values are Python literals; quote strings).")


def _chapter(args: argparse.Namespace) -> None:
    from papermill.exceptions import PapermillExecutionError

    root = _book_root(args.root)
    try:
        defaults = parameter_defaults(source_path(args.name, root))
    except ChapterError as error:
        raise UsageError(str(error)) from None
    parameters = {key: _value(value) for key, value in args.parameter}
    _check_parameters(parameters, defaults, args.name)
    out = _output(args.out or f"{args.name}.ipynb", args.force)
    try:
        execute(args.name, out, parameters=parameters, root=root, progress=args.progress)
    except PapermillExecutionError as error:
        failure = f"cell [{error.exec_count}] raised {error.ename}: {error.evalue}"
        if parameters and error.ename in ("ValueError", "TypeError"):
            raise UsageError(
                f"{args.name} rejected the parameters {parameters}: {failure}"
            ) from None
        if error.ename == "LMLoadError":  # the model named (or its packages) is at fault
            raise UsageError(f"{args.name} could not load its model: {failure}") from None
        raise RuntimeError(f"{args.name} failed: {failure}") from None
    print(f"wrote {out}")


def _book(args: argparse.Namespace) -> None:
    from sdelm.book.build import build
    from sdelm.book.execution import ChaptersFailedError

    try:
        html = build(_book_root(args.root), Path(args.out) if args.out else None, jobs=args.jobs)
    except ChaptersFailedError as error:  # a failure while running, not bad input
        raise RuntimeError(str(error)) from None
    print(f"built {html}")


def _robustness(args: argparse.Namespace) -> None:
    from sdelm.book.record import RECORD, claim_robustness
    from sdelm.book.robustness import measure

    try:
        record = measure(
            args.seeds,
            args.kernels,
            args.chapters or None,
            jobs=args.jobs,
            root=_book_root(args.root),
        )
    except ChapterError as error:
        raise UsageError(str(error)) from None
    by_chapter: dict[str, list[dict]] = {}
    for entry in record["claims"]:
        by_chapter.setdefault(entry["chapter"], []).append(entry)
    judged = [
        robust
        for chapter, entries in by_chapter.items()
        for robust in claim_robustness(chapter, entries, record).values()
    ]
    robust = sum(j.status == "robust" for j in judged)
    print(
        f"{len(judged)} claims over {len(record['runs'])} runs: {robust} robust (asserted), "
        f"{len(judged) - robust} fragile; wrote {_book_root(args.root) / RECORD}"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdelm")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sdelm",
        description="Text generation by an LLM as a stochastic differential equation.",
        epilog="Exit codes: 0 success, 1 failure while running, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=f"sdelm {_version()}")
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
    extract.add_argument("--n-prompts", type=_count, default=32)
    extract.add_argument("--temperatures", type=_temperature, nargs="+", default=[0.7, 1.3])
    extract.add_argument("--samples-per-prompt", type=_count, default=2)
    extract.add_argument("--max-new-tokens", type=_count, default=48)
    extract.add_argument("--n-passages", type=_natural, default=16, help="Shakespeare passages")
    extract.add_argument("--layers", type=_natural, nargs="+", default=None)
    extract.add_argument("--seed", type=_seed, default=0)
    extract.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    extract.add_argument(
        "--shard-size",
        type=_natural,
        default=0,
        help="write --out as a resumable folder of shards of this many prompts (generated text "
        "only; under `accelerate launch` or `torchrun` the processes share the shards)",
    )
    extract.set_defaults(run=_extract)

    fit = command("fit", "Fit an SDE to a trajectories file; print validation and test NLL.")
    fit.add_argument("trajectories", help="a file or shard folder written by `sdelm extract`")
    fit.add_argument("--out", required=True, help="output checkpoint .safetensors")
    fit.add_argument("--model", choices=MODELS, default="neural")
    fit.add_argument("--source", choices=("generated", "human", "all"), default="generated")
    fit.add_argument("--layer", type=_natural, default=None, help="default: the last recorded")
    fit.add_argument("--dim", type=_count, default=16)
    fit.add_argument("--epochs", type=_count, default=200)
    fit.add_argument("--seed", type=_seed, default=0)
    fit.add_argument("--device", default="auto")
    fit.set_defaults(run=_fit)

    simulate = command("simulate", "Simulate paths of a fitted SDE checkpoint.")
    simulate.add_argument("checkpoint", help="a file written by `sdelm fit`")
    simulate.add_argument("--out", required=True, help="output .safetensors with 'paths'")
    simulate.add_argument("--steps", type=_count, default=47)
    simulate.add_argument("--n-paths", type=_count, default=16)
    simulate.add_argument("--method", choices=("euler", "milstein", "srk"), default="euler")
    simulate.add_argument(
        "--start-from", help="trajectories file or shard folder: start at their first states"
    )
    simulate.add_argument("--seed", type=_seed, default=0)
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
    book.add_argument(
        "--jobs", type=_count, default=2, help="chapters executed at once (default 2)"
    )
    book.set_defaults(run=_book)

    robust = command(
        "robustness",
        "Execute the chapters at several seeds and CPU kernels; record every claim's verdicts "
        "in book/robustness.json (a claim is asserted only where they agree).",
    )
    robust.add_argument(
        "--seeds", type=_seed, nargs="+", default=[0, 1, 2], help="extraction seeds (0 1 2)"
    )
    robust.add_argument(
        "--kernels",
        nargs="+",
        choices=["avx2", "default", "avx512"],
        default=["avx2", "default"],
        help="ATen CPU kernels to run on (avx2 default): 'default' samples other tokens, as "
        "another processor does",
    )
    robust.add_argument("--chapters", nargs="+", help="default: every chapter with a seed")
    robust.add_argument("--root", help="book folder (default: here, else the repository)")
    robust.add_argument(
        "--jobs", type=_count, default=2, help="chapters executed at once (default 2)"
    )
    robust.set_defaults(run=_robustness)
    return parser


def _is_bad_input(error: Exception) -> bool:
    """Return whether an error means the input is at fault (exit code 2)."""
    lm = sys.modules.get("sdelm.lm")  # imported whenever a model was loaded
    return isinstance(error, BAD_INPUT_ERRORS) or (
        lm is not None and isinstance(error, lm.LMLoadError)
    )


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
        contextvars.copy_context().run(args.run, args)  # never_replace stays in the command
    except KeyboardInterrupt:
        print(f"sdelm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = " ".join(str(error).split())  # one line
        if _is_bad_input(error):
            print(f"sdelm {args.command}: {message}", file=sys.stderr)
            return BAD_INPUT
        print(f"sdelm {args.command} failed: {type(error).__name__}: {message}", file=sys.stderr)
        return FAILURE
    return OK
