"""The ``paramgen`` command line: build and inspect zoos, fit generators, sample and score weights.

    paramgen zoo build --preset tiny --out runs/demo/zoo
    paramgen zoo info runs/demo/zoo
    paramgen fit examples/demo.toml --set zoo=runs/demo/zoo --set out=runs/demo/generator
    paramgen sample runs/demo/generator --cond digits/0-2-4-6-7 -n 2 --seed 1 --sampler ddim --steps 50 --out samples/
    paramgen eval runs/demo/generator --zoo runs/demo/zoo --sampler ddim --steps 50 --out runs/demo/eval.json
    paramgen demo

``python -m paramgen`` and ``python -m paramgen.cli`` run the same. ``paramgen COMMAND
--help`` shows each command's options; logging goes to stderr (``-v`` for more, ``-q`` for
warnings only), results to stdout. A bad config or argument exits with status 2 and a
message naming what was expected; a failure while running exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from paramgen.cli._formatter import HelpFormatter

__all__ = ["main", "build_parser"]

logger = logging.getLogger("paramgen.cli")

_FIT_HELP = """\
Fit a generator on a zoo from a TOML config and save it (Generator.save_pretrained).

The config (relative paths resolve against its folder; --set paths against the working
directory):

    zoo = "runs/demo/zoo"          # a zoo folder (paramgen zoo build|import); chunkwise:
                                   # also a folder of .safetensors checkpoints or model folders
    out = "runs/demo/generator"    # where the fitted generator is saved
    [generator]
    pipeline = "d2nwg"             # d2nwg | cond-pdiff | igpg | chunkwise (paramgen.pipelines)
    condition = "task"             # task | text | text+arch | none (read from each checkpoint)
    seed = 0                       # initialization of the components
    tasks = ["..."]                # optional: the task names the conditioner knows
    latent_length = 16             # any other key: an option of the pipeline
    [fit]
    tokenizer_steps = 600          # any paramgen.training.FitConfig field
    prior_steps = 600
    seed = 0                       # all randomness of fitting
    log_every = 100                # steps between logged losses (INFO, shown by default)
    [tracking]                     # optional: params, losses and config to MLflow
    backend = "mlflow"             # mlflow (default in this table) | none
    uri = "sqlite:///mlflow.db"    # default: $MLFLOW_TRACKING_URI, else mlflow.db beside the config
    experiment = "paramgen-fit"    # and optionally run_name = "..."

Unknown keys are an error that lists the valid ones. The folder that receives out must
exist (out itself is created).
"""

_SAMPLE_HELP = """\
Sample weights from a saved generator and write them.

--out FILE.safetensors (or .pt / .pth / .bin) writes one model; any other --out is a
folder that receives <cond>-<i>.safetensors per sample (or .pt with --format pt, or one
PEFT adapter folder <cond>-<i>/ per sample when the generator makes LoRA adapters) and a
samples.json that lists them. The folder that receives --out must exist. The same --seed
gives the same weights, and the same command writes the same bytes.

A chunk-wise generator's folder (ChunkwiseGenerator.save_pretrained) streams each sample:
--out FILE.safetensors is one model; a folder receives <cond>-<i>/ per sample, a Hugging
Face model folder (config.json + model.safetensors, for AutoModel.from_pretrained) or a
PEFT adapter folder, whichever config the generator records (--format safetensors:
<cond>-<i>.safetensors files instead); --batch-size counts chunks.
"""


_EVAL_HELP = """\
Score a saved generator against the zoo it was fitted on, with the memorization baselines.

For each task of the zoo (or each --task), samples -n models conditioned on the task, then
scores on the task's test split (the split the zoo's runs were tested on):

    originals          the zoo's checkpoints of the task, re-evaluated
    generated          the generator's samples
    noisy checkpoint   a random original plus Gaussian noise, its scale matched so that the
                       noisy models lie as far from the zoo as the generated ones
                       (paramgen.novelty.matched_sigma, noisy_checkpoints)
    checkpoint mean    averages of min(16, originals) random originals (checkpoint_mean)
    gaussian           per-coordinate Gaussians fitted to the originals (elementwise_gaussian)

A generator earns its keep where it beats these at the same novelty. Prints one row per
task (mean test accuracy) and the median distance of each method's models to their nearest
zoo checkpoint; --out writes every model's accuracy, distance and wrong-prediction overlap
as JSON. An unconditional generator's samples are scored on every task, against baselines
drawn from the whole zoo.
"""


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("sampling options (passed to the prior; each prior takes its own)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default=None, help="diffusion priors: the sampler (default: the prior's; ddim unless an older folder recorded ddpm)")
    p.add_argument("--steps", type=int, default=None, help="diffusion priors: DDIM steps (default: the prior's, 50)")
    p.add_argument("--guidance-scale", type=float, default=None, help="diffusion priors: classifier-free guidance weight (default: the prior's)")
    p.add_argument("--eta", type=float, default=None, help="diffusion priors: DDIM stochasticity, 0 (deterministic) to 1 (default: the prior's)")
    p.add_argument("--temperature", type=float, default=None, help="autoregressive priors: softmax temperature (default: the prior's)")
    p.add_argument("--top-k", type=int, default=None, help="autoregressive priors: keep the k most likely tokens (default: the prior's)")


def _machine_options(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--device", default=None, help=f"{verb} on this device (e.g. cuda); default: the CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (paramgen's, transformers' and huggingface_hub's)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (standard library only: ``--help`` imports no torch)."""
    from paramgen import demo
    from paramgen.cli import zoo

    parser = argparse.ArgumentParser(prog="paramgen", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr: other libraries' too (-vv: debug, with tracebacks)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    z = sub.add_parser("zoo", help="build, import or summarize a zoo (paramgen zoo --help)", description=zoo.DESCRIPTION, formatter_class=HelpFormatter)
    zoo.add_arguments(z)
    d = sub.add_parser("demo", help="the end-to-end demo (make demo)", description=demo.__doc__, formatter_class=HelpFormatter)
    demo.add_arguments(d)

    f = sub.add_parser("fit", help="fit a generator from a TOML config and save it", description=_FIT_HELP, formatter_class=HelpFormatter)
    f.add_argument("config", metavar="CONFIG", help="a TOML file (schema above)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value; dotted keys reach into tables (fit.prior_steps=20, generator.seed=1)")  # fmt: skip
    f.add_argument("--out", default=None, help="save the generator here instead of the config's out")
    _machine_options(f, "fit")

    s = sub.add_parser("sample", help="sample weights from a saved generator", description=_SAMPLE_HELP, formatter_class=HelpFormatter)
    s.add_argument("generator", metavar="DIR", help="a folder written by paramgen fit (Generator.save_pretrained) or by ChunkwiseGenerator.save_pretrained")
    s.add_argument("--cond", action="append", default=None, metavar="COND",
                   help="a raw condition, e.g. a task name (repeat for several); omit for an unconditional generator")  # fmt: skip
    s.add_argument("--json-cond", action="store_true", help='read each --cond as JSON (e.g. a ["task text", "architecture text"] pair)')
    s.add_argument("-n", "--num", type=int, default=1, help="samples per condition")
    s.add_argument("--seed", type=int, default=0, help="seeds sampling")
    s.add_argument("--out", required=True, metavar="FILE|DIR", help="output file (one model) or folder; its parent folder must exist")
    s.add_argument("--format", choices=("safetensors", "pt", "peft"), default=None,
                   help="file format in a folder (default: peft for a LoRA generator, else safetensors)")  # fmt: skip
    s.add_argument("--task", action="append", default=None, help="task name per --cond (one, or one per condition) for a per-task normalizer")
    s.add_argument("--arch", action="append", default=None, help="architecture per --cond (one, or one per condition) for a family generator")
    s.add_argument("--base", default=None, help="a safetensors or PyTorch state dict supplying tensors the generator does not make")
    s.add_argument("--num-labels", type=int, default=None,
                   help="PEFT adapters: labels of the task (default: the task's, as fit recorded them from the zoo in adapter_export.json; else the generated head's rows)")  # fmt: skip
    s.add_argument("--lora-alpha", type=float, default=None,
                   help="PEFT adapters: lora_alpha written to adapter_config.json (default: the zoo's adapters', from adapter_export.json; else LoRASetup's, 8)")  # fmt: skip
    s.add_argument("--batch-size", type=int, default=256, help="models decoded at once")
    _machine_options(s, "sample")
    _sampling_options(s)

    e = sub.add_parser("eval", help="score a generator's samples against the zoo's originals and memorization baselines", description=_EVAL_HELP,
                       formatter_class=HelpFormatter)  # fmt: skip
    e.add_argument("generator", metavar="DIR", help="a folder written by paramgen fit (Generator.save_pretrained)")
    e.add_argument("--zoo", required=True, help="the zoo folder the generator was fitted on")
    e.add_argument("--task", action="append", default=None, help="score this task only (repeat for several; default: every task of the zoo)")
    e.add_argument("--condition", choices=("task", "text", "text+arch", "none"), default=None,
                   help="what the generator is conditioned on, read from the task's checkpoints as in the fit config (default: task, or none for an unconditional generator)")  # fmt: skip
    e.add_argument("-n", "--num", type=int, default=8, help="samples per task (and models per baseline)")
    e.add_argument("--seed", type=int, default=0, help="seeds sampling and the baselines")
    e.add_argument("--out", default=None, metavar="FILE.json", help="write every model's scores here as JSON; its folder must exist")
    e.add_argument("--batch-size", type=int, default=256, help="models decoded at once")
    _machine_options(e, "sample")
    _sampling_options(e)
    return parser


class _UsageError(Exception):
    """A bad argument or config: exit status 2."""


class _Stderr(logging.Handler):
    """Writes to the current ``sys.stderr`` (looked up at each record, not kept); through
    ``tqdm.write`` once tqdm is loaded, so that a record does not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            bars = sys.modules.get("tqdm")
            if bars is not None:
                bars.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
        except Exception:  # logging's own convention: report, never raise
            self.handleError(record)


def _logging(verbose: int, quiet: bool) -> None:
    """Log to stderr, unless the process configured logging already (then it is left as is).

    paramgen's records (progress, losses) at INFO, other libraries' at WARNING; ``-v`` adds
    other libraries' INFO and the logger names, ``-vv`` debug records, ``-q`` only warnings.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet or not verbose else logging.INFO if verbose == 1 else logging.DEBUG)
    logging.getLogger("paramgen").setLevel(logging.WARNING if quiet else logging.INFO if verbose < 2 else logging.DEBUG)


def _threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise _UsageError(f"--threads must be a positive integer, got {n}")
        import torch

        torch.set_num_threads(n)


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise _UsageError(f"{flag} must be a positive integer, got {value}")


def _output(out: str, flag: str = "--out") -> None:
    """An output path's folder must exist: a typo must not create a tree of folders."""
    from pathlib import Path

    parent = Path(out).expanduser().absolute().parent
    if not parent.is_dir():
        raise _UsageError(f"{flag} {out}: the folder {parent} does not exist; create it first (only the output itself is created)")


def _fit(args: argparse.Namespace) -> int:
    from paramgen.cli.recipe import ConfigError, Recipe, fit_recipe

    try:
        recipe = Recipe.from_toml(args.config, args.overrides)
    except ConfigError as e:
        raise _UsageError(f"{args.config}: {e}") from e
    _threads(args.threads)
    out = args.out or recipe.out
    _output(out, "--out" if args.out else "out")
    try:
        tracker = recipe.tracking.logger(tags={"paramgen.command": "fit", "paramgen.config": str(args.config)})
    except ImportError as e:
        raise _UsageError(f"{args.config}: [tracking] backend = {recipe.tracking.backend!r}: {e}") from e
    status = "FAILED"
    try:
        tracker.log_params(recipe.params())
        logger.info("fitting %s on %s (%d tokenizer + %d prior steps)", recipe.pipeline, recipe.zoo, recipe.fit.tokenizer_steps, recipe.fit.prior_steps)
        try:
            gen = fit_recipe(recipe, progress=False if args.no_progress else None, device=args.device, tracker=tracker)
        except FileNotFoundError as e:
            raise _UsageError(str(e)) from e
        except ConfigError as e:
            raise _UsageError(f"{args.config}: {e}") from e
        saved = gen.save_pretrained(out)
        if recipe.pipeline == "chunkwise":  # its folder: the inner generator and the chunk layout
            for path in sorted(saved.glob("*.json")):
                tracker.log_artifact(path)
        else:
            _save_adapter_export(recipe.zoo, saved)
            tracker.log_artifact(saved / "config.json")
        status = "FINISHED"
    finally:
        from paramgen.tracking import MLflowLogger

        if isinstance(tracker, MLflowLogger):  # a failed fit shows as FAILED in the MLflow UI
            tracker.close(status=status)
            logger.info("tracked as run %s of experiment %r in %s", tracker.run_id, recipe.tracking.experiment, tracker.tracking_uri)
        else:
            tracker.close()
    print(f"saved the fitted generator to {saved}")
    return 0


def _save_adapter_export(zoo: str, folder: Any) -> None:
    """Beside a generator fitted on PEFT adapters: their lora_alpha, base model and each task's labels."""
    from paramgen.lora import AdapterExport
    from paramgen.zoo import Zoo

    export = AdapterExport.from_zoo(Zoo.open(zoo))  # None unless the zoo holds PEFT adapters
    if export is not None:
        export.save(folder)


def _load_base(path: str) -> dict[str, Any]:
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise _UsageError(f"--base: no file {path}")
    if path.endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _UsageError(f"--base {path} is not a state dict (a mapping of names to tensors)")
    return state


def _per_cond(values: list[str] | None, conds: list[Any] | None, flag: str) -> list[str] | None:
    if values is None:
        return None
    b = len(conds) if conds else 1
    if len(values) == 1:
        return values * b
    if len(values) != b:
        raise _UsageError(f"{flag}: give one value, or one per --cond ({b}); got {len(values)}")
    return values


def _load_generator(args: argparse.Namespace) -> Any:
    from paramgen.generator import Generator

    try:
        return Generator.from_pretrained(args.generator, device=args.device)
    except FileNotFoundError as e:
        raise _UsageError(str(e)) from e


def _sampler_kwargs(args: argparse.Namespace, prior: Any) -> dict[str, Any]:
    """The sampling options given on the command line, checked against the prior."""
    from paramgen.cli.sample import SampleError, sampler_options

    given = {"sampler": args.sampler, "steps": args.steps, "guidance_scale": args.guidance_scale, "eta": args.eta, "temperature": args.temperature, "top_k": args.top_k}
    try:
        return sampler_options(prior, given)
    except SampleError as e:
        raise _UsageError(str(e)) from e


def _sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from paramgen.cli.sample import SampleError, format_of, lora_setup, output_paths, write_adapter, write_manifest, write_state_dict

    _positive(args.num, "-n/--num")
    _positive(args.batch_size, "--batch-size")
    _output(args.out)
    _threads(args.threads)
    from paramgen.chunkwise import is_chunkwise_folder

    if is_chunkwise_folder(args.generator):
        return _sample_chunkwise(args)
    gen = _load_generator(args)
    conds = _conditions(args)
    if gen.conditioner is not None and not conds:
        raise _UsageError("this generator is conditioned: pass --cond (e.g. a task name) at least once")
    if gen.conditioner is None and conds:
        raise _UsageError("this generator is unconditional: omit --cond")
    tasks = _per_cond(args.task, conds, "--task")
    archs = _per_cond(args.arch, conds, "--arch")
    if gen.family and archs is None:
        raise _UsageError(f"this generator serves a family: pass --arch (one of {sorted(gen.specs)})")
    export = None
    if not gen.family:
        from paramgen.lora import AdapterExport

        try:
            export = AdapterExport.load(args.generator)  # each task's labels, lora_alpha, base model: None unless fitted on PEFT adapters
        except ValueError as e:
            raise _UsageError(str(e)) from e
    alpha = args.lora_alpha if args.lora_alpha is not None or export is None else export.lora_alpha
    setup = None if gen.family else lora_setup(gen.spec, alpha=alpha)
    kwargs = _sampler_kwargs(args, gen.prior)
    try:
        fmt, single = format_of(args.out, args.format, lora=setup is not None)
        if fmt != "peft" and (args.num_labels is not None or args.lora_alpha is not None):
            raise SampleError("--num-labels and --lora-alpha apply to PEFT adapter output only")
        if setup is not None and args.num_labels is not None and not 2 <= args.num_labels <= setup.max_labels:
            raise SampleError(f"--num-labels must lie in 2..{setup.max_labels} (the generated head's rows), got {args.num_labels}")
        total = (len(conds) if conds else 1) * args.num
        if single and total != 1:
            raise SampleError(f"--out {args.out} is one file but {total} models were asked for; give a folder")
        paths = [args.out] if single else output_paths(conds or [], args.num, args.out, fmt)
    except SampleError as e:
        raise _UsageError(str(e)) from e
    if conds:
        try:  # an unknown task name or a malformed condition is a usage error, found before sampling
            gen.condition(conds)
        except (KeyError, ValueError, TypeError) as e:
            raise _UsageError(f"--cond: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from e
    base = _load_base(args.base) if args.base else None
    rng = torch.Generator(device=gen.device).manual_seed(args.seed)
    states = gen.sample(conds, args.num, generator=rng, tasks=tasks, archs=archs, base=base, batch_size=args.batch_size, **kwargs)
    rows = []
    for k, (path, state) in enumerate(zip(paths, states, strict=True)):
        cond = None if not conds else conds[k // args.num]
        if fmt == "peft":
            labels = args.num_labels if args.num_labels is not None or export is None else export.labels(cond, tasks[k // args.num] if tasks else None)
            write_adapter(path, state, setup, labels, base_model=None if export is None else export.base_model)
        else:
            write_state_dict(path, state, fmt, metadata={"format": "pt", "cond": str(cond), "seed": str(args.seed)})
        rows.append({"file": Path(path).name, "cond": cond, "sample": k % args.num})
        print(path)
    if not single:
        write_manifest(args.out, rows)
    logger.info("wrote %d sample(s) from %s", len(paths), args.generator)
    return 0


def _conditions(args: argparse.Namespace) -> list[Any] | None:
    """The --cond values, each read as JSON with --json-cond."""
    if not args.cond or not args.json_cond:
        return args.cond
    import json

    try:
        return [json.loads(c) for c in args.cond]
    except json.JSONDecodeError as e:
        raise _UsageError(f"--json-cond: a --cond is not JSON ({e})") from e


def _sample_chunkwise(args: argparse.Namespace) -> int:
    """``paramgen sample`` on a folder of ChunkwiseGenerator.save_pretrained: each sample
    streamed into a .safetensors file, or into a Hugging Face model folder (config.json) or
    a PEFT adapter folder (adapter_config.json), whichever config the generator records."""
    from pathlib import Path

    import torch

    from paramgen.chunkwise import ChunkwiseGenerator
    from paramgen.cli.sample import output_paths, write_manifest

    for flag, given in (("--format pt", args.format == "pt"), ("--task", args.task), ("--arch", args.arch), ("--num-labels", args.num_labels), ("--lora-alpha", args.lora_alpha)):
        if given:
            raise _UsageError(f"{flag} does not apply to a chunk-wise generator (it writes .safetensors files, Hugging Face model folders or PEFT adapter folders)")
    suffix = Path(args.out).suffix.lower()
    if suffix in (".pt", ".pth", ".bin"):
        raise _UsageError(f"--out {args.out}: a chunk-wise generator streams safetensors: give --out FILE.safetensors or a folder")
    gen = ChunkwiseGenerator.from_pretrained(args.generator, device=args.device)
    conds = _conditions(args)
    if gen.task_conditioned and not conds:
        raise _UsageError("this chunk-wise generator is task-conditioned: pass --cond (e.g. a task name) at least once")
    if not gen.task_conditioned and conds:
        raise _UsageError("this chunk-wise generator is unconditional: omit --cond")
    kwargs = _sampler_kwargs(args, gen.generator.prior)
    single = suffix == ".safetensors"
    total = (len(conds) if conds else 1) * args.num
    if single and total != 1:
        raise _UsageError(f"--out {args.out} is one file but {total} models were asked for; give a folder")
    if single and args.format not in (None, "safetensors"):
        raise _UsageError(f"--out {args.out} is a .safetensors file but --format is {args.format!r}")
    if args.format == "peft" and gen.adapter_config is None:
        raise _UsageError("--format peft: this chunk-wise generator records no adapter_config.json (build it with adapter_config=, or fit it on PEFT adapter folders)")
    files = single or args.format == "safetensors"
    if not files and gen.model_config is None and gen.adapter_config is None:
        raise _UsageError(
            "this chunk-wise generator records no config.json nor adapter_config.json, so it cannot write model or adapter folders: "
            "give --out FILE.safetensors, or --format safetensors for one file per sample in the folder"
        )
    if conds:
        try:  # an unknown task name is a usage error, found before sampling
            gen.generator.condition([(0, c) for c in conds])
        except (KeyError, ValueError, TypeError) as e:
            raise _UsageError(f"--cond: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from e
    paths = [args.out] if single else output_paths(conds or [], args.num, args.out, "safetensors" if files else "peft")  # "peft": folder names, no suffix
    base = _load_base(args.base) if args.base else None
    rng = torch.Generator(device=gen.device).manual_seed(args.seed)
    rows = []
    for k, path in enumerate(paths):
        cond = None if not conds else conds[k // args.num]
        gen.sample(cond, out=path, base=base, batch_size=args.batch_size, generator=rng, **kwargs)
        rows.append({"file": Path(path).name, "cond": cond, "sample": k % args.num})
        print(path)
    if not single:
        write_manifest(args.out, rows)
    logger.info("wrote %d sample(s) from the chunk-wise generator %s", len(paths), args.generator)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from paramgen.cli.evaluate import EvalError, evaluate_generator, format_table
    from paramgen.io import write_json

    _positive(args.num, "-n/--num")
    _positive(args.batch_size, "--batch-size")
    if args.out is not None:
        _output(args.out)
    _threads(args.threads)
    gen = _load_generator(args)
    kwargs = _sampler_kwargs(args, gen.prior)
    try:
        report = evaluate_generator(
            gen, args.zoo, n=args.num, seed=args.seed, tasks=args.task, condition=args.condition, batch_size=args.batch_size, sample_kwargs=kwargs,
        )  # fmt: skip
    except EvalError as e:
        raise _UsageError(str(e)) from e
    report = {"generator": str(args.generator), **report}
    print(format_table(report))
    if args.out is not None:
        write_json(args.out, report)
        logger.info("wrote the scores of every model to %s", args.out)
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from paramgen.cli.zoo_commands import run

    return run(args, prog="paramgen zoo")


def _demo(args: argparse.Namespace) -> int:
    from paramgen.demo import run

    return run(args)


_COMMANDS = {"fit": _fit, "sample": _sample, "eval": _eval, "zoo": _zoo, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed, 2 bad usage)."""
    from paramgen.cli.progress import progress_bars

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    _logging(args.verbose, args.quiet)
    try:
        with progress_bars(not getattr(args, "no_progress", False)):  # zoo info has no bars
            return _COMMANDS[args.command](args)
    except _UsageError as e:
        print(f"paramgen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failure while running: one clear line; -vv shows the traceback
        logger.debug("traceback", exc_info=True)
        print(f"paramgen {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
