"""`sigma synth`: write synthetic edit pairs in the pairs.jsonl layout, or build the training cache."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sigma.cli.common import integer, path, refuse_run_folder, refuse_unused, within
from sigma.config.schema import MAX_WORKING_SIZE

# Pairs one `sigma synth` writes (three PNGs each, their pairs.jsonl lines held until the end): -n 1e30 wrote
# pairs until the disk was full, and a larger set is several runs (other --seed) into other folders.
MAX_SYNTH_PAIRS = 100_000
MAX_SEED = 2**63 - 1
MAX_LATENT_EDITS = 16
# Defaults of the flags one mode uses: their argparse default is None, so that a flag given in the other mode is told
# from one not given (and refused: refuse_unused).
DEFAULT_PAIRS = 16
CACHE_DEFAULTS = {"max_side": 384, "scales": "1.0,0.5", "latent_edits": 1}

HELP = """Generate synthetic edit pairs (deterministic from --seed) over real photos, written in the
pairs.jsonl layout that `sigma eval --data DIR` reads: <id>_original.png, <id>_edited.png, <id>_mask.png.

--build-cache precomputes what is expensive on a CPU (each photo resized, its TAEF2 roundtrips at several
scales and a latent edit) into DIR for training (data.cache=DIR).
"""

EXAMPLES = """examples:
  sigma synth --out runs/synth-sample -n 32 --seed 0
  sigma synth --out runs/synth-sample -n 32 --photos ~/my_photos data.crop=256
  sigma synth --build-cache runs/cache/photos384 --photos ../shared/data/photos
"""

_KIND_EDITOR = {"none": "no edit (perturbation only)", "remove": "synthetic removal (OpenCV inpainting / patch fill)",
                "splice": "synthetic splice (another photo / copy-move, feathered, harmonised)",
                "attribute": "synthetic attribute change inside the mask", "global": "synthetic global restyle",
                "latent": "TAEF2 latent edit (region of the latent replaced, decoded)",
                "copymove": "synthetic copy-move (a patch of the same photo, rotated / scaled)",
                "inpaint": "synthetic generative inpainting (a region re-made around an object)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic edit pairs (pairs.jsonl layout) or build the training cache",
                       description=HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=path, help="output folder for the pairs")
    p.add_argument("-n", type=integer, action=within(1, MAX_SYNTH_PAIRS),
                   help=f"number of pairs (default {DEFAULT_PAIRS}; 1 .. {MAX_SYNTH_PAIRS}); not with --build-cache")
    p.add_argument("--seed", type=integer, action=within(0, MAX_SEED), default=0, help="default 0; 0 .. 2^63-1")
    p.add_argument("--photos", type=path,
                   help="photo folder (default $SIGMA_SHARED/data/photos; with --cache, the photos it "
                   "does not hold yet are served from it)")
    p.add_argument("--cache", type=path,
                   help="use a cache built with --build-cache (VAE roundtrips + latent edits); not with "
                   "--build-cache")
    p.add_argument("--build-cache", metavar="DIR", type=path, help="build the training cache into DIR and exit")
    p.add_argument("--max-side", type=integer, action=within(32, MAX_WORKING_SIZE),
                   help=f"cache: long side of the stored photos ({CACHE_DEFAULTS['max_side']}; 32 .. "
                        f"{MAX_WORKING_SIZE}); only with --build-cache, as are the next four")
    p.add_argument("--scales", help=f"cache: TAEF2 roundtrip scales ({CACHE_DEFAULTS['scales']})")
    p.add_argument("--latent-edits", type=integer, action=within(0, MAX_LATENT_EDITS),
                   help=f"cache: latent edits per photo ({CACHE_DEFAULTS['latent_edits']}; 0 .. {MAX_LATENT_EDITS})")
    p.add_argument("--no-vae", action="store_true", default=None,
                   help="cache without TAEF2 (no roundtrips, no latent edits)")
    p.add_argument("--device", help="cache: where TAEF2 runs (auto: CUDA when present, else the CPU; cpu, cuda, "
                   "cuda:N). A GPU builds the 946-photo bank in under a minute where 2 CPU cores take half an hour; "
                   "its roundtrips differ from the CPU's in the last bits")
    p.add_argument("--no-progress", action="store_true", default=None,
                   help="no progress bar on stderr (pairs written, or photos cached)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="SynthConfig overrides of the pairs, e.g. "
                   "data.crop=256; not with --build-cache")
    p.set_defaults(run=run, config_of=config_of, stdout_is_a_log=True)


def config_of(args: argparse.Namespace) -> None:
    """What `run` checks before any work, only read, for the parser's `refused_said`: `sigma synth --out DIR -n abc
    data.crop=abc` said the bad -n alone, and the bad override (or a flag of the other mode) only on the next run."""
    from sigma.config.loader import load_config
    from sigma.data.synth.engine import SynthConfig

    _refuse_other_modes_flags(args)
    if args.build_cache:
        _cache_arguments(args)
    else:
        load_config(SynthConfig, None, _synth_overrides(args))


def _synth_overrides(args: argparse.Namespace) -> list[str]:
    """The pairs' `key=value` overrides as SynthConfig reads them (`data.crop` is its `crop`)."""
    return [o[5:] if o.startswith("data.") else o for o in args.overrides]


def _default_photos() -> Path:
    from sigma.models.vae import shared_dir

    return shared_dir() / "data" / "photos"


def _cache_arguments(args: argparse.Namespace) -> tuple[float, ...]:
    """The cache's numbers checked before the VAE loads and the first photo is read (a bad one used to
    surface as a traceback, or as a 0-px photo deep in the build); returns the parsed scales."""
    from sigma.errors import InputError

    text = args.scales if args.scales is not None else CACHE_DEFAULTS["scales"]
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        scales = ()
    if not scales or not all(0 < s <= 2 for s in scales):
        raise InputError(f"--scales: comma-separated roundtrip scales in (0, 2], e.g. 1.0,0.5; got {text!r}",
                         code="bad_arguments")
    return scales


def _refuse_other_modes_flags(args: argparse.Namespace) -> None:
    """A flag of the other mode did nothing (`--max-side 64` without --build-cache wrote pairs as if it were not
    there; `--build-cache DIR -n 5 --out X` built the cache and wrote no pairs): one bad_arguments line naming it,
    before anything is read or written."""
    if args.build_cache:
        refuse_unused({"--out": args.out, "-n": args.n, "--cache": args.cache,
                       **{item: item for item in args.overrides}},
                      "not with --build-cache DIR, which stores each photo, its TAEF2 roundtrips and latent edits "
                      "for training; pairs are written by another run, `sigma synth --out DIR [--cache DIR]`")
        if args.no_vae:
            refuse_unused({"--device": args.device}, "not with --no-vae: no TAEF2 runs to place")
    else:
        refuse_unused({"--max-side": args.max_side, "--scales": args.scales, "--latent-edits": args.latent_edits,
                       "--no-vae": args.no_vae, "--device": args.device},
                      "only with --build-cache DIR (settings of the training cache); `sigma synth --out DIR` writes "
                      "pairs from the photos, or from a cache built with them (--cache DIR)")


def _command(args: argparse.Namespace, n: int) -> str:
    """The command line that finishes this run's set when run again (written into the set's unfinished mark)."""
    import shlex

    words = ["sigma", "synth", "--out", args.out, "-n", str(n), "--seed", str(args.seed)]
    for flag, value in (("--photos", args.photos), ("--cache", args.cache)):
        if value:
            words += [flag, value]
    return shlex.join(words + list(args.overrides))


def _commit_pairs(out: Path, lines: list[str]) -> None:
    """pairs.jsonl, the file that names the pairs, put down once they are on disk: every PNG was fsynced before its
    rename (`write_synth_pair(durable=True)`), `out` is fsynced here (their names), then pairs.jsonl is written
    fsynced and renamed (synth_config.yaml before it); `run` fsyncs `out` once more after it. Before, nothing was
    synced: a power cut after "N pairs in ..." could leave a pairs.jsonl naming PNGs empty, cut short or missing, or
    no pairs.jsonl at all."""
    from sigma.tempfiles import replace_atomically, sync_folder

    sync_folder(out)
    replace_atomically(out / "pairs.jsonl", ("\n".join(lines) + "\n").encode(), durable=True)


def run(args: argparse.Namespace) -> int:
    from sigma.config.loader import load_config, save_resolved
    from sigma.errors import ConfigError
    from sigma.text import printable

    _refuse_other_modes_flags(args)
    photos = Path(args.photos) if args.photos else _default_photos()
    if args.build_cache:
        scales = _cache_arguments(args)
        max_side = CACHE_DEFAULTS["max_side"] if args.max_side is None else args.max_side
        latent_edits = CACHE_DEFAULTS["latent_edits"] if args.latent_edits is None else args.latent_edits
        import torch

        from sigma.data.synth.cache import build_cache
        from sigma.models.device import pick_device
        from sigma.models.vae import load_default_vae

        torch.set_num_threads(max(1, torch.get_num_threads()))
        vae = None if args.no_vae else load_default_vae(str(pick_device(args.device or "auto")))
        from tqdm import tqdm

        bars: list[tqdm] = []    # made at the first photo: a folder with no photos is an error line, no empty bar

        def progress(done: int, total: int) -> None:
            if not bars:
                bars.append(tqdm(total=total, desc="sigma synth --build-cache", unit="photo", file=sys.stderr,
                                 disable=bool(args.no_progress), dynamic_ncols=True))
            bars[0].update(done - bars[0].n)

        try:
            out = build_cache(photos, args.build_cache, vae, max_side=max_side, scales=scales,
                              latent_edits=latent_edits, seed=args.seed, progress=progress,
                              log=lambda line: tqdm.write(line, file=sys.stderr))
        finally:
            for bar in bars:
                bar.close()
        print(f"cache: {printable(out)}")
        return 0
    if not args.out:
        raise ConfigError("give --out DIR (pairs) or --build-cache DIR")
    from sigma.data.synth.engine import SynthConfig, SynthEngine
    from sigma.data.synth.pairs_out import write_synth_pair
    from sigma.data.synth.set_out import begin_set, end_set, refuse_foreign_set

    cfg = load_config(SynthConfig, None, _synth_overrides(args))
    # --photos beside --cache serves the photos the cache does not hold (yet), as data.photos does in training;
    # it was dropped when --cache was given
    given = {key: value for key, value in (("cache", args.cache), ("photos", args.photos)) if value}
    if given:
        cfg = cfg.model_copy(update=given)
    if not cfg.cache and not cfg.photos:
        cfg = cfg.model_copy(update={"photos": str(photos)})
    out = Path(args.out)
    from tqdm import tqdm

    from sigma.folderlock import hold_folder
    from sigma.tempfiles import sync_folder

    # one writer per folder: two (other seeds, other -n) would leave a pairs.jsonl naming a mix of both; held
    # before the photo folder is read, so an unusable --out is said first
    # a batch or training run's folder: the pairs, pairs.jsonl and synth_config.yaml were put among the run's files
    refuse_run_folder(out, "--out", "the pairs would be written among the run's files")
    refuse_foreign_set(out)          # before the hold: a refused run leaves no .lock in the user's set
    with hold_folder(out, other="--out"):
        engine = SynthEngine(cfg, seed=args.seed)
        lines = []
        n = DEFAULT_PAIRS if args.n is None else args.n
        for i in tqdm(range(n), desc="sigma synth", unit="pair", file=sys.stderr, disable=bool(args.no_progress),
                      dynamic_ncols=True):
            s = engine.sample(i)
            if not i:                 # the first pair made: a run that cannot make one leaves the earlier set be
                begin_set(out, args.seed, n, _command(args, n))
            lines.append(write_synth_pair(s, out, f"synth{args.seed}_{i:05d}", _KIND_EDITOR[s.kind],
                                          f"sigma synth seed={args.seed} index={i}", instruction_fields=True,
                                          durable=True))
        # the config before the listing: killed between them, OUT lists nothing rather than new pairs beside an
        # earlier run's config
        save_resolved(cfg, out, "synth_config.yaml", durable=True)
        _commit_pairs(out, lines)
        sync_folder(out)              # pairs.jsonl's and synth_config.yaml's names, before "done"
        end_set(out)                  # and only then the mark that made OUT a refusal to every reader
    print(printable(f"{n} pairs in {out}/pairs.jsonl"))
    return 0
