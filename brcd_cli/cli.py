"""The ``brcd`` command line: a thin typed shell over the library.

Every command maps to one library call. User mistakes raise BrcdError (or a
codes-file error) and end as one line on stderr with the exit code listed in
the README; only bugs show a traceback.
"""
from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import typer

from .errors import BrcdError, OptionError
from . import choices
from .options import VALID_BITS, positive, value_of

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Image search by binary hash codes: train a CIBHash teacher, distil a BRCD student, encode, search, evaluate.",
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_CODES_FILE = 5


METHOD_HELP = "distillation method (brcd methods lists each with its weight and what it needs); none: the student alone"

# A library option's field -> the flag that sets it, where that is not --field-name (typer's own naming).
FLAGS = {"k": "-k"}


def flag_of(field: str) -> str:
    """The flag a user typed for a field that failed its check, so errors speak the command line's words."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def log(message: str) -> None:
    """Progress and notes go to stderr so that --json output on stdout stays machine-readable."""
    typer.echo(message, err=True)


log.live_progress = True  # type: ignore[attr-defined]  # long loops may draw a live bar on a terminal (progress.py)


@contextmanager
def _workers() -> Iterator[Any]:
    """Join torchrun's process group when launched by it (a world of one otherwise), and leave it after."""
    from . import distributed

    world = distributed.init()
    try:
        yield world
    finally:
        distributed.shutdown(world)


def _quiet(message: str) -> None:
    """Workers other than rank 0 stay silent so that torchrun's output reads like one process's."""


def _skip_bad(doing: str) -> Any:
    """The --skip-bad option of a command that reads a whole collection before it starts (training, evaluating)."""
    return typer.Option(False, "--skip-bad", help=f"{doing} without the images that cannot be read, naming each "
                        "(default: refuse, naming them all)")


def _readable(data: str, skip_bad: bool, say: Callable[[str], None] = log) -> Any:
    """The collection ``data`` names, every image checked to decode first (data/screen.py says why)."""
    from .data import open_source
    from .data.screen import readable

    return readable(open_source(data), skip_bad, log=say)


def _parse_clusters(value: str) -> Optional[int]:
    if value == "auto":
        return None
    try:
        k = int(value)
    except ValueError:
        raise BrcdError(f"--clusters must be 'auto' or a positive integer, got {value!r}") from None
    if k < 1:
        raise BrcdError(f"--clusters must be 'auto' or a positive integer, got {value!r}")
    return k


def _fit(epochs: int, batch_size: int, lr: float, patience: int, time_budget: Optional[float], seed: int,
         save_every: float = 30.0):
    """The training loop's options from the shared flags (they check themselves)."""
    from .training import FitOptions

    return FitOptions(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, time_budget=time_budget, seed=seed,
                      save_every=save_every)


@app.command("train-teacher")
def train_teacher_cmd(
    data: str = typer.Argument(..., help="digits, an image folder, a list file or a CIFAR-10 folder"),
    out: Path = typer.Option(Path("teacher"), "--out", help="output folder for the teacher"),
    arch: Optional[str] = typer.Option(None, help="any timm model name (default: vit_base_patch16_224 when its weights are "
                                        "here, else the largest pretrained backbone available offline)"),
    method: choices.TeacherMethod = typer.Option("cibhash", help="cibhash (learned), or the closed-form floors lsh (random "
                                                 "hyperplanes) and itq (PCA + rotation) on the frozen features"),
    bits: int = typer.Option(64, help=f"code length: one of {', '.join(map(str, VALID_BITS))}"),
    image_size: int = typer.Option(224, help="input size in pixels"),
    pretrained: str = typer.Option("auto", help="auto (timm's local cache, else an installed offline weights package; never the network), none, or a weights file"),
    freeze_backbone: Optional[bool] = typer.Option(None, "--freeze-backbone/--train-backbone", help="default: frozen when pretrained"),
    head: choices.Head = typer.Option("linear", help="linear, or mlp (Linear-ReLU-Linear)"),
    hidden: int = typer.Option(1000, help="hidden width of the mlp head"),
    augment: Optional[choices.Augment] = typer.Option(None, help="augmentation recipe (default: the data set's own)"),
    epochs: int = typer.Option(200),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(5e-4),
    patience: int = typer.Option(10, help="epochs without a better validation mAP before stopping"),
    time_budget: Optional[float] = typer.Option(None, help="stop training after this many seconds"),
    save_every: float = typer.Option(30.0, help="seconds between saves of the resume state (0: after every epoch)"),
    seed: int = typer.Option(0),
    stochastic: bool = typer.Option(False, help="sample codes as sign(p - u), u ~ U(0,1), while training"),
    feature_cache: Optional[bool] = typer.Option(None, "--feature-cache/--no-feature-cache", help="train the head from cached frozen features (default: on when the backbone is frozen)"),
    cache_views: int = typer.Option(8, help="augmented views per image kept in the feature cache"),
    cache_dir: Optional[Path] = typer.Option(None, help="feature cache folder (default: $BRCD_CACHE_DIR, else OUT/feature-cache)"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)"),
    resume: bool = typer.Option(False, help="continue an interrupted run in --out"),
    force: bool = typer.Option(False, help="overwrite a model already in --out"),
    skip_bad: bool = _skip_bad("train"),
) -> None:
    """Train a teacher: CIBHash (NT-Xent on straight-through sign codes + Bernoulli KL bottleneck), or an LSH or ITQ floor."""
    from .training import TeacherOptions, train_teacher
    from .threads import set_threads

    set_threads(threads)
    options = TeacherOptions(
        arch=arch, bits=bits, image_size=image_size, pretrained=pretrained, freeze_backbone=freeze_backbone,
        head=head.value, hidden=hidden, augment=value_of(augment), seed=seed, stochastic=stochastic, method=method.value,
        feature_cache=feature_cache, cache_views=cache_views, cache_dir=cache_dir,
        fit=_fit(epochs, batch_size, lr, patience, time_budget, seed, save_every),
    )
    with _workers() as world:  # one process, or one of several under torchrun
        say = log if world.is_main else _quiet
        train_teacher(_readable(data, skip_bad, say), out, options, resume=resume, force=force, log=say)


@app.command("distill")
def distill_cmd(
    data: str = typer.Argument(..., help="the teacher's training data"),
    teacher: Path = typer.Option(..., "--teacher", help="teacher folder from train-teacher"),
    out: Path = typer.Option(Path("student"), "--out", help="output folder for the student"),
    arch: Optional[str] = typer.Option(None, help="any timm model name (default: efficientnet_b0 when its weights are here, "
                                        "else the smallest pretrained backbone available offline)"),
    image_size: Optional[int] = typer.Option(None, help="input size (default: the teacher's)"),
    pretrained: str = typer.Option("auto", help="auto (timm's local cache, else an installed offline weights package; never the network), none, or a weights file"),
    freeze_backbone: Optional[bool] = typer.Option(None, "--freeze-backbone/--train-backbone", help="default: frozen when pretrained"),
    head: choices.Head = typer.Option("mlp", help="mlp (Linear-ReLU-Linear), or linear"),
    hidden: int = typer.Option(1000, help="hidden width of the mlp head"),
    method: choices.Method = typer.Option("brcd", help=METHOD_HELP),
    weight: Optional[float] = typer.Option(None, help="weight of the distillation term (default: the method's published setting)"),
    feature_cache: Optional[bool] = typer.Option(None, "--feature-cache/--no-feature-cache", help="train the heads from cached frozen features (default: on when the student backbone is frozen)"),
    cache_views: int = typer.Option(8, help="augmented views per image kept in the feature cache"),
    cache_dir: Optional[Path] = typer.Option(None, help="feature cache folder (default: $BRCD_CACHE_DIR, else TEACHER/feature-cache, shared by its students)"),
    alpha: float = typer.Option(0.8, help="weight of individual vs structural alignment"),
    margin: float = typer.Option(0.5, help="bit mask keeps bits whose in-cluster consistency is >= margin"),
    clusters: str = typer.Option("auto", help="k for k-means on teacher codes, or auto (best silhouette)"),
    max_clusters: int = typer.Option(20, help="largest k tried by --clusters auto"),
    false_neg: bool = typer.Option(True, "--false-neg/--no-false-neg", help="drop same-cluster negatives"),
    false_pos: bool = typer.Option(True, "--false-pos/--no-false-pos", help="drop structural positives that left their cluster"),
    bit_mask: bool = typer.Option(True, "--bit-mask/--no-bit-mask", help="mask inconsistent bits in structural terms"),
    mask_rule: choices.MaskRule = typer.Option("consistent", help="consistent (the method) or opposite (ablation)"),
    augment: Optional[choices.Augment] = typer.Option(None, help="augmentation recipe (default: the teacher's)"),
    epochs: int = typer.Option(400),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    patience: int = typer.Option(10),
    time_budget: Optional[float] = typer.Option(None, help="stop training after this many seconds"),
    save_every: float = typer.Option(30.0, help="seconds between saves of the resume state (0: after every epoch)"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None),
    resume: bool = typer.Option(False),
    force: bool = typer.Option(False),
    skip_bad: bool = _skip_bad("train"),
) -> None:
    """Distil a teacher into a small student with BRCD (clusters and bit masks are computed here and saved beside it)."""
    from .training import DistillOptions, distill
    from .threads import set_threads

    set_threads(threads)
    options = DistillOptions(
        arch=arch, image_size=image_size, pretrained=pretrained, freeze_backbone=freeze_backbone, method=method.value,
        head=head.value, hidden=hidden,
        alpha=alpha, margin=margin, clusters=_parse_clusters(clusters), max_clusters=max_clusters,
        false_negatives=false_neg, false_positives=false_pos, bit_mask=bit_mask, mask_rule=mask_rule.value,
        augment=value_of(augment), seed=seed, fit=_fit(epochs, batch_size, lr, patience, time_budget, seed, save_every),
        weight=weight, feature_cache=feature_cache, cache_views=cache_views, cache_dir=cache_dir,
    )
    with _workers() as world:
        say = log if world.is_main else _quiet
        distill(_readable(data, skip_bad, say), teacher, out, options, resume=resume, force=force, log=say)


@app.command("experiment")
def experiment_cmd(
    data: str = typer.Argument(..., help="labelled data: digits, an image folder with class subfolders, a list file, CIFAR-10"),
    out: Path = typer.Option(Path("report"), "--out", help="folder for teachers, cells, results.csv, results.md and plots"),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="a teacher folder (one bit length) or a folder of <bits>/ teachers; omitted: trained here"),
    bits: str = typer.Option("16,32,64", help="comma list of code lengths"),
    seeds: int = typer.Option(3, help="student seeds 0..N-1 per cell"),
    methods: str = typer.Option("all", help="all, baselines (every method), ablations (brcd and its ablations), "
                                "or a comma list of rows (brcd methods lists them)"),
    teacher_arch: Optional[str] = typer.Option(None, help="teachers trained here: timm model (default: as train-teacher's)"),
    image_size: int = typer.Option(224, help="teachers trained here: input size"),
    student_image_size: Optional[int] = typer.Option(None, help="student input size (default: the teacher's)"),
    teacher_pretrained: str = typer.Option("auto", help="teachers trained here: auto, none, or a weights file"),
    teacher_epochs: int = typer.Option(200, help="teachers trained here: epochs"),
    teacher_budget: Optional[float] = typer.Option(None, help="teachers trained here: seconds of training each"),
    teacher_lr: float = typer.Option(5e-4, help="teachers trained here: learning rate"),
    teacher_batch_size: Optional[int] = typer.Option(None, help="teachers trained here: batch size (default: --batch-size)"),
    teacher_patience: Optional[int] = typer.Option(None, help="teachers trained here: early stopping (default: --patience)"),
    floors: str = typer.Option("lsh,itq", help="closed-form teachers scored beside each teacher (lsh, itq), or none"),
    student_arch: Optional[str] = typer.Option(None, help="student timm model (default: as distill's)"),
    student_pretrained: str = typer.Option("auto", help="auto, none, or a weights file"),
    freeze_student: Optional[bool] = typer.Option(None, "--freeze-student/--train-student", help="default: frozen when pretrained"),
    hidden: int = typer.Option(1000, help="hidden width of the student's mlp head"),
    epochs: int = typer.Option(400, help="student epochs per cell"),
    patience: int = typer.Option(10, help="student early stopping on validation mAP"),
    time_budget: Optional[float] = typer.Option(None, help="seconds of training per student"),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    clusters: str = typer.Option("auto", help="k for BRCD's k-means, or auto"),
    max_clusters: int = typer.Option(20, help="largest k tried by --clusters auto"),
    feature_cache: Optional[bool] = typer.Option(None, "--feature-cache/--no-feature-cache", help="default: on when the student backbone is frozen"),
    cache_views: int = typer.Option(8, help="augmented views per image in the feature cache"),
    threads: Optional[int] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    skip_bad: bool = _skip_bad("run"),
) -> None:
    """Run (or continue) BRCD vs KD baselines and ablations over bit lengths and seeds; write results.md, results.csv and plots."""
    from .experiment import ExperimentOptions, parse_bits, parse_methods, run_experiment
    from .training import DistillOptions, TeacherOptions
    from .threads import set_threads

    set_threads(threads)
    bit_list = parse_bits(bits)
    options = ExperimentOptions(
        bits=bit_list, seeds=seeds, methods=parse_methods(methods), teacher=teacher,
        teacher_options=TeacherOptions(arch=teacher_arch, bits=bit_list[0], image_size=image_size, pretrained=teacher_pretrained,
                                       cache_views=cache_views,
                                       fit=_fit(teacher_epochs, teacher_batch_size or batch_size, teacher_lr,
                                                teacher_patience or patience, teacher_budget, 0)),
        floors=[] if floors.strip() == "none" else [f.strip() for f in floors.split(",") if f.strip()],
        student=DistillOptions(arch=student_arch, image_size=student_image_size, pretrained=student_pretrained,
                               freeze_backbone=freeze_student, hidden=hidden,
                               clusters=_parse_clusters(clusters), max_clusters=max_clusters, feature_cache=feature_cache, cache_views=cache_views,
                               fit=_fit(epochs, batch_size, lr, patience, time_budget, 0)),
        command="brcd " + " ".join(sys.argv[1:]),
    )
    summary = run_experiment(_readable(data, skip_bad), out, options, log=log)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(str(out / "results.md"))


@app.command("methods")
def methods_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The registered distillation methods: published weight, what each needs, whether it keeps the teacher's
    code space, and the experiment grid's rows (each method, then its ablations)."""
    from .losses.registry import methods, variants

    found = methods()
    rows = variants()
    if as_json:
        typer.echo(json.dumps({
            "methods": [{"name": m.name, "weight": m.weight, "needs": sorted(m.needs), "keeps_code_space": m.keeps_code_space,
                         "summary": m.summary, "ablations": list(m.variants)} for m in found.values()],
            "rows": rows,
        }))
        return
    for m in found.values():
        space = "teacher's code space" if m.keeps_code_space else "own code space"
        typer.echo(f"{m.name:8s} weight {m.weight:<7g} {space:20s} needs {', '.join(sorted(m.needs)) or 'nothing'}")
        typer.echo(f"         {m.summary}")
        for variant, changes in m.variants.items():
            typer.echo(f"         ablation {variant}: " + ", ".join(f"{k}={v}" for k, v in changes.items()))


@app.command("encode")
def encode_cmd(
    images: str = typer.Argument(..., help="image folder, list file, CIFAR-10 folder or digits"),
    model: Path = typer.Option(..., "--model", help="teacher or student folder, or a built-in perceptual hasher (perceptual:dct64, perceptual:dct256)"),
    out: Path = typer.Option(..., "--out", help="codes file to write"),
    batch_size: int = typer.Option(128),
    force: bool = typer.Option(False, help="overwrite an existing codes file (or discard an interrupted encode)"),
    resume: bool = typer.Option(False, help="continue an interrupted encode of --out from its last batch"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="exit 0 even if some images could not be read (they are always skipped and listed)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads of the forward (default: chosen after the first "
                                          "batches: every core when the forward dominates, the cores the decode workers "
                                          "leave, at least one, when decoding does)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="decode threads working ahead of the model (default: one per core; 0: decode serially)"),
    exact_decode: bool = typer.Option(False, "--exact-decode", help="decode every pixel of a JPEG (default: the smallest DCT scale that covers the model's input)"),
    decode_device: choices.Device = typer.Option("cpu", "--decode-device", help="where JPEGs are decoded: cpu (Pillow) or cuda (nvJPEG, a full decode)"),
    update: bool = typer.Option(False, "--update", help="encode only the images that are new or changed since OUT was written, "
                                "drop those that are gone (creates OUT when missing; reruns continue an interrupted update)"),
) -> None:
    """Encode a collection into a packed codes file (streamed, resumable, written atomically).

    Images that cannot be read are skipped and listed, with the reason, on stderr and in OUT.skipped.tsv;
    the codes of the others are written either way, and the exit code is 3 unless --skip-bad is given.
    A folder or list file's files are recorded in OUT.stat, so that --update later encodes only what changed.
    """
    from .data import open_source
    from .data.loader import LoadOptions
    from .errors import DataError
    from .pipeline import encode_distributed
    from .threads import set_threads
    from .update import encode_recorded, update_collection

    set_threads(threads)
    loading = LoadOptions(workers=workers, exact=exact_decode, device=decode_device.value, tune_threads=not threads)
    if update and (force or resume):
        raise BrcdError("--update keeps what is current and continues an interrupted update by itself; "
                        "drop " + ("--force" if force else "--resume"))
    with _workers() as world:
        if world.distributed and update:
            raise BrcdError("--update runs in one process; run it without torchrun")
        if world.distributed:  # under torchrun: one shard per process, merged by rank 0
            result = encode_distributed(open_source(images), model, out, world, batch_size=batch_size, overwrite=force,
                                        resume=resume, log=log if world.is_main else _quiet, loading=loading)
        elif update:
            result = update_collection(open_source(images), model, out, batch_size=batch_size, log=log, loading=loading)
        else:
            result = encode_recorded(open_source(images), model, out, batch_size=batch_size, overwrite=force, resume=resume,
                                     log=log, loading=loading)
    if world.is_main and not getattr(result, "up_to_date", False):
        log(f"wrote {result.count} codes to {out}")
    if result.skipped:
        message = f"skipped {len(result.skipped)} unreadable image(s), listed in {result.skipped_file}"
        if not skip_bad:
            raise DataError(f"{message}; pass --skip-bad to accept skips")
        log(message)


@app.command("remove")
def remove_cmd(
    codes: Path = typer.Argument(..., help="codes file from brcd encode"),
    ids: Optional[list[str]] = typer.Argument(None, help="ids of the items to remove (as brcd search prints them)"),
    from_file: Optional[Path] = typer.Option(None, "--from-file", help="also remove the ids listed in this file, one per line"),
    ignore_missing: bool = typer.Option(False, "--ignore-missing", help="remove the ids that are there and list the others, "
                                        "instead of refusing"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Remove items from a codes file by id, atomically; its index and record of files follow.

    An id that is not in the file is an error (nothing is removed) unless --ignore-missing is given. The image files
    are not touched: a file that is still in the folder comes back with the next encode --update."""
    from .update import remove_items

    wanted = list(ids or [])
    if from_file is not None:
        try:
            text = from_file.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise BrcdError(f"cannot read {from_file}: {exc.strerror or exc}") from None
        wanted += [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    if not wanted:
        raise BrcdError("give the ids to remove, or --from-file FILE")
    result = remove_items(codes, wanted, ignore_missing=ignore_missing, log=log)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for item_id in result.missing:
        log(f"not in {codes}: {item_id}")
    typer.echo(f"removed {result.removed} item{'' if result.removed == 1 else 's'} from {codes}; {result.count} remain")


@app.command("duplicates")
def duplicates_cmd(
    codes: Path = typer.Argument(..., help="codes file from brcd encode"),
    radius: int = typer.Option(..., "--radius", help="pairs within this Hamming distance (inclusive) are near-duplicates"),
    as_json: bool = typer.Option(False, "--json", help="print the groups as one JSON object"),
    as_csv: bool = typer.Option(False, "--csv", help="print one CSV row per group member (group, index, id, reference, distance)"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="also write a self-contained HTML sheet of every group's thumbnails"),
    images: Optional[list[Path]] = typer.Option(None, "--images", help="folder that relative item paths are found under, for --html (repeatable)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads of the search (default: all cores)"),
) -> None:
    """Groups of near-duplicate images: every pair within --radius, found by the collection's radius search (through
    the index, CODES.mih or one built in memory), joined into connected groups. Each group's reference is its
    earliest item in the codes file; every member is listed with its distance to the reference."""
    from .duplicates import check_output, find_duplicates, text_lines, to_csv, write_duplicates_sheet
    from .pipeline import display_id

    if as_json and as_csv:
        raise BrcdError("give --json or --csv, not both")
    check_output(html_out)
    report = find_duplicates(codes, radius, threads=threads, log=log)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    elif as_csv:
        typer.echo(to_csv(report), nl=False)
    else:
        typer.echo("\n".join(text_lines(report, display_id)))
    if html_out is not None:
        log(f"duplicates sheet: {write_duplicates_sheet(html_out, report, codes, images or ())}")


@app.command("search")
def search_cmd(
    queries: list[Path] = typer.Argument(..., help="query images, folders of them, or list files (one image path per line)"),
    codes: Optional[list[Path]] = typer.Option(None, "--codes", help="codes file from brcd encode; repeat for shards (searched as one)"),
    model: Path = typer.Option(..., "--model", help="model that encodes the query (a student for ASHP; perceptual:NAME for codes a perceptual hasher wrote)"),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="number of nearest codes (default: 10)"),
    radius: Optional[int] = typer.Option(None, help="return every code within this Hamming distance (inclusive) instead of -k"),
    milvus: Optional[str] = typer.Option(None, "--milvus", help="search a Milvus collection (server URI or Milvus Lite .db file) instead of codes files"),
    collection: Optional[str] = typer.Option(None, "--collection", help="Milvus collection, needed with --milvus (the name brcd export milvus printed)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON: one line per query"),
    html_out: Optional[Path] = typer.Option(None, "--html", help="also write a self-contained HTML sheet of the queries and their hits"),
    exact_scan: bool = typer.Option(False, "--exact-scan", help="always scan the codes, even where an index (brcd index) exists"),
    exact_decode: bool = typer.Option(False, "--exact-decode", help="decode every pixel of a JPEG query (default: the smallest DCT scale that covers the model's input, as encode does)"),
) -> None:
    """Search codes files (or a Milvus collection) with images: rank, Hamming distance and id of the nearest codes.

    Several queries (or a folder, or a list file) are searched in one process, the model and codes loaded once.
    A codes file with a valid index beside it (CODES.mih, from brcd index) is searched through the index when the
    request suits it (radius search, small -k); the results are the same as a scan's."""
    from .errors import DataError
    from .pipeline import display_id, expand_queries, search_images

    from .search import request_of

    k, radius = request_of(k, radius)
    source, collection = _collection_source(codes, milvus, collection)
    paths = expand_queries(queries)
    results = search_images(paths, source, model, k=k, radius=radius, exact_scan=exact_scan, collection=collection, log=log,
                            exact_decode=exact_decode)
    failed = [r for r in results if r.error is not None]
    if len(results) == 1 and failed:
        raise DataError(failed[0].error)
    for r in results:
        if as_json:
            row = r.to_dict()
            typer.echo(json.dumps({"query": row["query"], "radius": radius, "k": None if radius is not None else k,
                                   **{key: v for key, v in row.items() if key != "query"}}))
            continue
        if len(results) > 1:
            typer.echo(f"query {display_id(str(r.query))}" + (f": {r.error}" if r.error else ""))
        if r.error is None and not r.hits:
            typer.echo("no codes found" + (f" within radius {radius}" if radius is not None else ""))
        for h in r.hits:
            typer.echo(f"{h.rank:>4}  {h.distance:>3}  {display_id(h.id)}")
    if html_out is not None:
        log(f"results sheet: {_results_sheet(html_out, results, source, collection)}")
    if failed:
        raise DataError(f"{len(failed)} of {len(results)} query images could not be read (the first: {failed[0].error})")


def _collection_source(codes: Optional[list[Path]], milvus: Optional[str],
                       collection: Optional[str]) -> tuple[Any, Optional[str]]:
    """What --codes or --milvus/--collection name, as open_collection takes it (the collection only with Milvus)."""
    if bool(codes) == bool(milvus):
        raise BrcdError("give either --codes (one or more codes files) or --milvus URI")
    if milvus and not collection:
        raise BrcdError("--milvus needs --collection (the name brcd export milvus printed)")
    return (milvus, collection) if milvus else (codes, None)


def _results_sheet(out: Path, results: list, source: Any, collection: Optional[str]) -> Path:
    from .results_sheet import write_results_sheet
    from .search import open_collection
    from .serve.images import ItemImages

    with open_collection(source, collection=collection) as opened:
        images = ItemImages.beside(opened, source)
        return write_results_sheet(out, results, images, f"brcd search: {len(results)} queries against {opened.name}")


@app.command("serve")
def serve_cmd(
    codes: Optional[list[Path]] = typer.Option(None, "--codes", help="codes file to serve; repeat for shards (searched as one)"),
    model: Path = typer.Option(..., "--model", help="model that encodes the queries (a student for ASHP)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="port (0: any free one, printed at start)"),
    token: Optional[str] = typer.Option(None, "--token", envvar="BRCD_TOKEN", help="require Authorization: Bearer TOKEN on the API"),
    insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback --host without a token"),
    max_body_mb: float = typer.Option(20.0, "--max-body-mb", help="largest request body accepted, in MB"),
    milvus: Optional[str] = typer.Option(None, "--milvus", help="serve a Milvus collection (server URI or Milvus Lite .db file) instead"),
    collection: Optional[str] = typer.Option(None, "--collection", help="Milvus collection, needed with --milvus (the name brcd export milvus printed)"),
    images: Optional[list[Path]] = typer.Option(None, "--images", help="folder that relative item paths are found under (repeatable)"),
    exact_scan: bool = typer.Option(False, "--exact-scan", help="always scan, even where an index exists"),
    threads: Optional[int] = typer.Option(None),
    exact_decode: bool = typer.Option(False, "--exact-decode", help="decode every pixel of an uploaded JPEG (default: the smallest DCT scale that covers the model's input, as encode does)"),
) -> None:
    """Load the model and the codes once and answer searches over HTTP: a JSON API and a page of thumbnails at /.

    Binds to 127.0.0.1 unless told otherwise; a non-loopback address needs --token (or --insecure)."""
    from .serve import check_bind, create_app, run_server
    from .serve.service import SearchService
    from .threads import set_threads

    source, collection = _collection_source(codes, milvus, collection)
    positive("max_body_mb", max_body_mb)
    check_bind(host, token, insecure)
    set_threads(threads)
    service = SearchService(model, source, collection=collection, use_index=not exact_scan,
                            roots=images or (), log=log, exact_decode=exact_decode)
    log(f"loaded {service.collection.count:,} {service.bits}-bit codes ({type(service.collection).__name__}) and {model}")
    try:
        run_server(create_app(service, token=token, max_body=int(max_body_mb * 1024 * 1024)), host, port, log=log)
    finally:
        service.close()


@app.command("index")
def index_cmd(
    codes: Path = typer.Argument(..., help="codes file from brcd encode"),
    out: Optional[Path] = typer.Option(None, "--out", help="index file (default: CODES.mih, where brcd search looks)"),
    m: Optional[int] = typer.Option(None, "--m", help="substrings (hash tables); default about bits / log2(count)"),
    force: bool = typer.Option(False, help="replace an index built from other codes"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Build the multi-index hashing index of a codes file, for exact radius and k-NN lookup by brcd search.

    An index of the same codes is left as it is; after codes were appended it is rebuilt over all of them."""
    from .search.mih import build_index

    report = build_index(codes, out, m=m, force=force, log=log)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    typer.echo(f"{report.action}: {report.path} ({report.count} codes, m={report.m}, "
               f"{report.bytes_per_code:.1f} bytes per code, {report.seconds:.2f} s)")


export_app = typer.Typer(no_args_is_help=True, help="Export codes to a serving system.")
app.add_typer(export_app, name="export")


@export_app.command("milvus")
def export_milvus_cmd(
    codes: Path = typer.Argument(..., help="codes file from brcd encode"),
    uri: str = typer.Option(..., "--uri", help="Milvus server URI (http://host:19530) or a Milvus Lite .db file"),
    collection: Optional[str] = typer.Option(None, "--collection", help="collection name (default: from the codes file name)"),
    force: bool = typer.Option(False, help="replace an existing collection of that name"),
) -> None:
    """Load a codes file into Milvus as BINARY_VECTOR with HAMMING (BIN_FLAT: exact), for brcd search --milvus."""
    from .search.milvus import export_codes

    done = export_codes(codes, uri, collection, overwrite=force, log=log)
    typer.echo(done["collection"])


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks against peer libraries, measured in the same run.")
app.add_typer(bench_app, name="bench")


def _print_report(report: dict, format_lines: Callable[[dict], list[str]], as_json: bool) -> None:
    """A benchmark's report: one JSON object with --json, else its human-readable lines."""
    typer.echo(json.dumps(report) if as_json else "\n".join(format_lines(report)))


@bench_app.command("search")
def bench_search_cmd(
    bits: int = typer.Option(64, "--bits", help="code length in bits (a multiple of 8)"),
    n: int = typer.Option(1_000_000, "--n", help="database codes"),
    queries: int = typer.Option(1000, "--queries", help="queries per batch; 1 measures single-query latency"),
    k: int = typer.Option(100, "-k", "--k", help="nearest codes per query"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads for brcd and faiss (default: all cores)"),
    repeats: int = typer.Option(3, "--repeats", help="timed repeats (median); latency mode times at least 100 queries"),
    seed: int = typer.Option(0, "--seed", help="seed of the random codes"),
    check_queries: int = typer.Option(4, "--check-queries", help="queries also checked against the numpy reference"),
    use_faiss: bool = typer.Option(True, "--faiss/--no-faiss", help="measure faiss IndexBinaryFlat too"),
    rounds: int = typer.Option(1, "--rounds", help="brcd-then-faiss rounds back to back; reports each round's ratio "
                               "and the best round of each side"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    device: choices.Device = typer.Option("cpu", "--device", help="cpu (brcd vs faiss) or cuda (brcd's GPU kernels vs the torch reference)"),
) -> None:
    """Exact k-NN over random codes: brcd vs faiss IndexBinaryFlat (queries/s, speedup, exactness).

    With --device cuda: brcd's GPU kernels vs plain torch (xor + popcount + topk) on the GPU."""
    if device.value == "cuda":
        from .bench.cuda import GpuSearchBenchConfig, format_search_report, run_gpu_search_bench

        gpu_report = run_gpu_search_bench(GpuSearchBenchConfig(bits=bits, n=n, queries=queries, k=k, repeats=repeats,
                                                               seed=seed, check_queries=check_queries))
        _print_report(gpu_report, format_search_report, as_json)
        return
    from .bench.search import SearchBenchConfig, format_report, run_search_bench

    config = SearchBenchConfig(bits=bits, n=n, queries=queries, k=k, threads=threads, repeats=repeats, seed=seed,
                               check_queries=check_queries, use_faiss=use_faiss, rounds=rounds)
    report = run_search_bench(config)
    _print_report(report, format_report, as_json)


@bench_app.command("loss-kernel")
def bench_loss_kernel_cmd(
    rows: int = typer.Option(512, "--rows", help="rows of the similarity (2B: both views of a batch of B)"),
    bits: int = typer.Option(64, "--bits", help="code length L"),
    repeats: int = typer.Option(50, "--repeats", help="timed repeats (median)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64"),
    device: choices.GpuDevice = typer.Option("cuda", "--device", help="only cuda: the fused kernels are GPU kernels"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Masked similarity of the BRCD loss, forward + backward: fused CUDA kernels vs the torch composite."""
    from .bench.cuda import LossBenchConfig, format_loss_report, run_loss_bench

    report = run_loss_bench(LossBenchConfig(rows=rows, bits=bits, repeats=repeats, dtype=dtype))
    _print_report(report, format_loss_report, as_json)


@bench_app.command("distill-cache")
def bench_distill_cache_cmd(
    data: str = typer.Argument("digits", help="labelled data"),
    out: Path = typer.Option(Path("bench-distill-cache"), "--out", help="work folder (students, caches, a teacher if trained)"),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="teacher folder (default: train a resnet18 at 32 px for --teacher-budget s)"),
    teacher_budget: float = typer.Option(120.0, help="seconds to train the teacher when --teacher is not given"),
    bits: int = typer.Option(64, help="bits of a teacher trained here"),
    student_arch: str = typer.Option("mobilenetv3_small_050"),
    pretrained: str = typer.Option("none", help="student weights: auto, none, or a file (its backbone is frozen either way)"),
    hidden: int = typer.Option(512),
    method: choices.Method = typer.Option("brcd", help=METHOD_HELP),
    epochs: int = typer.Option(5, help="epochs of each side (no early stopping)"),
    seeds: int = typer.Option(1, help="seeds per side; means are reported"),
    cache_views: int = typer.Option(8),
    threads: Optional[int] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Seconds per epoch and test mAP of distillation with the frozen-feature cache vs without, in one run."""
    from .bench.cache import CacheBenchConfig, format_report, run_cache_bench
    from .data import open_source
    from .training import DistillOptions, FitOptions, TeacherOptions
    from .threads import set_threads

    set_threads(threads)
    config = CacheBenchConfig(
        out=out, teacher=teacher, epochs=epochs, seeds=seeds, views=cache_views,
        teacher_options=TeacherOptions(arch="resnet18", bits=bits, image_size=32, pretrained="none",
                                       fit=FitOptions(epochs=1000, patience=1000, time_budget=teacher_budget)),
        student=DistillOptions(arch=student_arch, pretrained=pretrained, freeze_backbone=True, hidden=hidden, method=method.value),
    )
    report = run_cache_bench(open_source(data), config, log=log)
    _print_report(report, format_report, as_json)


@bench_app.command("lookup")
def bench_lookup_cmd(
    bits: int = typer.Option(64, "--bits", help="code length in bits (a multiple of 8)"),
    n: int = typer.Option(1_000_000, "--n", help="database codes"),
    radius: Optional[int] = typer.Option(2, "--radius", help="radius search (inclusive); ignored when --k is given"),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="k-NN instead of radius search"),
    clustered: bool = typer.Option(False, "--clustered", help="clustered codes (centres plus bit flips) instead of uniform"),
    clusters: int = typer.Option(1000, "--clusters", help="cluster centres of --clustered codes"),
    flip: float = typer.Option(0.05, "--flip", help="per-bit flip probability of --clustered codes"),
    queries: int = typer.Option(1000, "--queries", help="queries, each searched alone (a lookup takes microseconds: fewer make a noisy timing)"),
    repeats: int = typer.Option(3, "--repeats", help="timed rounds (median)"),
    m: Optional[int] = typer.Option(None, "--m", help="substrings of the index (default: about bits / log2 n)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads of the linear scan (default: all cores)"),
    seed: int = typer.Option(0, "--seed"),
    use_faiss: bool = typer.Option(True, "--faiss/--no-faiss", help="measure faiss IndexBinaryMultiHash too"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Exact multi-index hashing vs brcd's linear scan vs faiss IndexBinaryMultiHash, single query, one run."""
    from .bench.lookup import LookupBenchConfig, format_report, run_lookup_bench

    config = LookupBenchConfig(bits=bits, n=n, radius=radius, k=k, clustered=clustered, clusters=clusters, flip=flip,
                               queries=queries, repeats=repeats, m=m, threads=threads, seed=seed, use_faiss=use_faiss)
    report = run_lookup_bench(config)
    _print_report(report, format_report, as_json)


@bench_app.command("encode")
def bench_encode_cmd(
    model: Optional[Path] = typer.Option(None, "--model", help="model to encode with (default: a pretrained tf_efficientnet_lite0 student at 64 px, built here)"),
    folder: Optional[Path] = typer.Option(None, "--folder", help="where the JPEGs are made, once (default: brcd-bench-encode in the temp folder)"),
    images: int = typer.Option(240, "--images", help="JPEG files encoded in each run"),
    distinct: int = typer.Option(24, "--distinct", help="distinct pictures behind them (the files are hard links to these, cycling)"),
    sizes: str = typer.Option(",".join("%dx%d" % s for s in ((4000, 3000), (3000, 4000), (4032, 3024), (2592, 1944), (1920, 1080))),
                              "--sizes", help="camera sizes WIDTHxHEIGHT, cycled over the distinct pictures"),
    quality: int = typer.Option(92, "--quality", help="JPEG quality of the files"),
    batch_size: int = typer.Option(32, "--batch-size"),
    workers: Optional[int] = typer.Option(None, "--workers", help="decode threads of the parallel runs (default: one per core)"),
    decode_device: choices.Device = typer.Option("cpu", "--decode-device", help="cuda: also measure nvJPEG decoding on the GPU"),
    exact: bool = typer.Option(True, "--exact/--no-exact", help="also measure the exact decoding (every pixel, several times "
                               "slower; leave it out for long runs) and the bits the draft moves against it"),
    native_crops: int = typer.Option(9, "--native-crops", help="seeded crops per photograph in the set of real pictures at their own sizes (0: the 20 whole ones)"),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads of the forward in every row (default: all cores "
                                          "for the network alone, encode's own choice end to end)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """End-to-end encode of camera-sized JPEGs vs the network alone: images/s, decode/resize/forward split,
    serial vs parallel, draft vs exact decoding (and how many bits the draft moves), in one run."""
    from .bench.encode import EncodeBenchConfig, format_report, parse_sizes, run_encode_bench

    decodings = ("draft",) + (("exact",) if exact else ()) + (("cuda",) if decode_device.value == "cuda" else ())
    config = EncodeBenchConfig(model=model, folder=folder, images=images, distinct=distinct, sizes=parse_sizes(sizes),
                               quality=quality, batch_size=batch_size, workers=workers, decodings=decodings,
                               native_crops=native_crops, seed=seed, threads=threads)
    _print_report(run_encode_bench(config, log=log), format_report, as_json)


@bench_app.command("duplicates")
def bench_duplicates_cmd(
    folder: Optional[Path] = typer.Option(None, "--folder", help="work folder: the images (made once), the codes, the model (default: brcd-bench-duplicates in the temp folder)"),
    model: Optional[Path] = typer.Option(None, "--model", help="model to encode with (default: tf_efficientnet_lite0 at 128 px with an ITQ head fitted on photos, built here)"),
    radius: int = typer.Option(8, "--radius", help="brcd's radius to report (the sweep covers 0..16 either way)"),
    grid: int = typer.Option(3, "--grid", help="tiles per side cut from each photograph (the distinct images)"),
    originals: float = typer.Option(0.35, "--originals", help="share of tiles that get four near-duplicate copies"),
    size: int = typer.Option(192, "--size", help="side of the tiles in pixels"),
    seed: int = typer.Option(0, "--seed"),
    use_imagededup: bool = typer.Option(True, "--imagededup/--no-imagededup", help="measure imagededup's PHash (and CNN) too"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Near-duplicates on seeded copies of the embedded photographs: brcd vs imagededup (PHash, CNN), precision and
    recall of the pairs and time, in one run."""
    from .bench.duplicates import DuplicatesBenchConfig, format_report, run_duplicates_bench

    config = DuplicatesBenchConfig(folder=folder, model=model, radius=radius, grid=grid, originals=originals, size=size,
                                   seed=seed, use_imagededup=use_imagededup)
    _print_report(run_duplicates_bench(config, log=log), format_report, as_json)


@bench_app.command("serve")
def bench_serve_cmd(
    model: Path = typer.Option(..., "--model", help="model the server encodes queries with"),
    codes: Optional[Path] = typer.Option(None, "--codes", help="codes file to serve (default: --n random codes in the model's code space)"),
    n: int = typer.Option(1_000_000, "--n", help="random codes when --codes is not given"),
    clients: int = typer.Option(1, "--clients", help="concurrent clients, each on its own connection"),
    requests: int = typer.Option(500, "--requests", help="searches in all (after a warm-up of 20)"),
    k: int = typer.Option(10, "-k", "--k", help="nearest codes per search"),
    threads: Optional[int] = typer.Option(None, "--threads", help="the server's CPU threads (default: all cores)"),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Bounded load test of brcd serve on 127.0.0.1: queries/s, p50/p99 latency, decode/encode/search split, memory."""
    from .bench.serve import ServeBenchConfig, format_report, run_serve_bench

    report = run_serve_bench(ServeBenchConfig(model=model, codes=codes, n=n, clients=clients, requests=requests, k=k,
                                              seed=seed, threads=threads), log=log)
    _print_report(report, format_report, as_json)


@app.command("evaluate")
def evaluate_cmd(
    data: str = typer.Argument(..., help="labelled data: digits, an image folder with class subfolders, a list file, CIFAR-10"),
    teacher: Path = typer.Option(..., "--teacher"),
    student: Optional[Path] = typer.Option(None, "--student"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="mAP@K (default: 1000 for CIFAR-10, else the whole ranking)"),
    seed: int = typer.Option(0, help="split seed (use the training seed)"),
    as_json: bool = typer.Option(False, "--json"),
    threads: Optional[int] = typer.Option(None),
    skip_bad: bool = _skip_bad("evaluate"),
) -> None:
    """mAP@K (ties by index, and tie-aware) and precision within radius 2 for teacher-teacher, ASHP and SSHP."""
    from .evaluation.protocol import default_top_k, evaluate_models
    from .models import load_model
    from .threads import set_threads

    set_threads(threads)
    source = _readable(data, skip_bad)
    t, _ = load_model(teacher)
    s = load_model(student)[0] if student is not None else None
    scores = evaluate_models(source, t, s, seed=seed, top_k=top_k if top_k is not None else default_top_k(source), log=log)
    if as_json:
        typer.echo(json.dumps(scores))
        return
    for key, value in scores.items():
        typer.echo(f"{key:24s} {value:.4f}" if isinstance(value, float) else f"{key:24s} {value}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("brcd-demo"), "--out", help="folder for the teacher, students and codes file"),
    data: choices.DemoData = typer.Option("photos", help="photos: real photographs, pretrained frozen backbones (the paper's "
                                          "setting); digits: small networks from scratch"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    budget: float = typer.Option(1.0, help="scale the training (epochs and time caps; 1.0 = a few minutes on 2 cores)"),
    threads: Optional[int] = typer.Option(None),
) -> None:
    """The whole pipeline on embedded data: teacher, BRCD student, student alone, floors, evaluate, encode, search."""
    from .demo import print_report, run_demo
    from .threads import set_threads

    set_threads(threads)
    report = run_demo(out, budget=budget, data=data.value, log=log)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        print_report(report)


@app.command("info")
def info_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Versions, available kernel backends and the one that runs."""
    from .info import collect_info

    info = collect_info()
    if as_json:
        typer.echo(json.dumps(info))
        return
    for key, value in info.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for k2, v2 in value.items():
                typer.echo(f"  {k2}: {v2}")
        elif isinstance(value, list) and all(isinstance(row, dict) and row for row in value):
            typer.echo(f"{key}:")  # one line per row, named by its first field
            for row in value:
                (_, name), *rest = row.items()
                typer.echo(f"  {name}: " + ", ".join(f"{k2}={v2}" for k2, v2 in rest))
        else:
            typer.echo(f"{key}: {value}")


def _click_exceptions():
    """Click's exception classes: typer vendors click in newer releases and depends on it in older ones."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    if not hasattr(exceptions, "NoArgsIsHelpError"):
        exceptions.NoArgsIsHelpError = type("NoArgsIsHelpError", (exceptions.UsageError,), {})
    if not hasattr(exceptions, "Abort"):
        exceptions.Abort = typer.Abort
    return exceptions


class _LazyCommands(Mapping[str, Any]):
    """A typer app's commands as a click group's mapping, each command built the first time it is looked up.

    typer turns every command's signature into click parameters whenever the
    app runs, and the training commands' --method choices come from the method
    registry, which imports torch. Building only the command that runs keeps
    ``brcd index`` and the other commands to the imports they use; a mistyped
    command name still sees them all. The group's own --help lists them from
    summaries (name, help, hidden) while :meth:`listing` holds, so ``brcd
    --help`` builds none of them either.
    """

    def __init__(self, typer_app: typer.Typer, root: typer.Typer) -> None:
        from typer.main import get_command_from_info

        self._makers: dict[str, Callable[[], Any]] = {}
        for info in typer_app.registered_commands:
            self._makers[info.name] = partial(get_command_from_info, info, pretty_exceptions_short=root.pretty_exceptions_short,
                                              rich_markup_mode=root.rich_markup_mode)
        for group in typer_app.registered_groups:
            self._makers[group.name] = partial(lazy_group, group.typer_instance, group.name, root)
        self._summaries = {**{info.name: partial(_summary, info) for info in typer_app.registered_commands},
                           **{group.name: partial(_group_summary, group) for group in typer_app.registered_groups}}
        self._built: dict[str, Any] = {}
        self._listing = False

    def __getitem__(self, name: str) -> Any:
        if self._listing and name not in self._built:
            return self._summaries[name]()
        if name not in self._built:
            self._built[name] = self._makers[name]()
        return self._built[name]

    @contextmanager
    def listing(self) -> Iterator[None]:
        """Look-ups answer with summaries for the duration: what a group's help needs of its commands."""
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def _setting(value: Any) -> Any:
    """A typer setting's value, whether given or left at typer's default."""
    from typer.models import DefaultPlaceholder

    return value.value if isinstance(value, DefaultPlaceholder) else value


def _summary(info: Any) -> Any:
    """A command as its group's help shows it (name, help, hidden), without building its parameters."""
    import click

    return click.Command(info.name, help=_setting(info.help) or inspect.getdoc(info.callback),
                         short_help=_setting(info.short_help), hidden=bool(_setting(info.hidden)),
                         deprecated=bool(_setting(info.deprecated)))


def _group_summary(group: Any) -> Any:
    import click

    return click.Group(group.name, help=_setting(group.help) or _setting(group.typer_instance.info.help),
                       hidden=bool(_setting(group.hidden)))


def lazy_group(typer_app: typer.Typer, name: Optional[str] = None, root: Optional[typer.Typer] = None) -> Any:
    """The click group of a typer app (and of its sub-apps, which take the root's settings, as typer's do)
    whose commands are built on first use."""
    root = root or typer_app
    from typer.core import TyperGroup

    class LazyGroup(TyperGroup):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            with self.commands.listing():
                super().format_help(ctx, formatter)

    return LazyGroup(name=name, commands=_LazyCommands(typer_app, root), help=_setting(typer_app.info.help),
                     no_args_is_help=_setting(typer_app.info.no_args_is_help), rich_markup_mode=root.rich_markup_mode)


def _interrupted(args: Sequence[str]) -> str:
    """What to say after Ctrl-C: a command that keeps its work says how to continue it, any other only that it stopped.

    ``--update`` continues an interrupted update by itself (it refuses ``--resume``), so its advice differs.
    """
    name = next((arg for arg in args if not arg.startswith("-")), "")
    info = next((c for c in app.registered_commands if c.name == name and c.callback is not None), None)
    params = inspect.signature(info.callback).parameters if info is not None else {}
    if "update" in params and "--update" in args:
        return "interrupted; rerun the same command to continue the update"
    if "resume" in params:
        return "interrupted; rerun the same command with --resume to continue"
    return "interrupted"


def main() -> None:
    """Console entry point: user errors become one line and an exit code, never a traceback.

    Click's own usage errors (missing argument, bad option value) would print
    three lines of usage; they are reduced to the same one-line form with
    exit code 2, and ``--help`` shows the way to the full usage.
    """
    click = _click_exceptions()
    try:
        from .codes import CodesFileError
    except ImportError:  # pragma: no cover - the codes package is part of brcd
        CodesFileError = ()  # type: ignore[assignment,misc]
    from .kernels._registry import BackendError  # a BRCD_* choice that names no backend, path or shape
    try:
        code = lazy_group(app)(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc), err=True)
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "brcd"
        typer.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except OptionError as exc:
        typer.echo(f"error: {flag_of(exc.field)} {exc.problem}", err=True)
        sys.exit(exc.exit_code)
    except BrcdError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except CodesFileError as exc:  # type: ignore[misc]
        typer.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CODES_FILE)
    except BackendError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(BrcdError.exit_code)
    except (KeyboardInterrupt, typer.Abort, click.Abort):
        typer.echo(_interrupted(sys.argv[1:]), err=True)
        sys.exit(EXIT_INTERRUPTED)
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this exit code itself
        typer.echo(_interrupted(sys.argv[1:]), err=True)
    if isinstance(code, int) and code:
        sys.exit(code)
