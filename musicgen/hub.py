"""Weights on disk and on the Hugging Face Hub: the MusicGen checkpoint and, for melody checkpoints, the
HTDemucs bag that separates melody stems. For each: where it is, whether a directory may be used, downloading
it and verifying it.

A download resolves the revision once (MUSICGEN_REVISION: a branch, tag or commit; default ``main``), fetches
at that commit only the files loading needs (``musicgen.engine.layout`` chooses them from the repository's own file
list; partial files resume), checks every file's size and hash against the Hub's listing and records them in the
directory's manifest (``musicgen.manifest``). A directory the project downloaded is used only once its manifest
says it verified and every file has its recorded size; otherwise the next start repairs it (downloading
allowed) or refuses with one sentence naming the repository, the files and the command. A directory without a
manifest (one a user provides) is used as given, with one log line saying it was not verified, and is never written
to: nothing is downloaded into a directory that holds files but no manifest of this project for the same
repository (``python -m musicgen.hub --replace`` asks for it).

From the command line: ``python -m musicgen.hub [MODEL] [--dir DIR] [--revision REV]`` fetches a checkpoint,
``python -m musicgen.hub --stems`` the HTDemucs bag (``make weights`` runs both), ``python -m musicgen.hub --mbd``
the MultiBand Diffusion decoder's weights (``make weights-mbd``; converted once to safetensors), and
``python -m musicgen.hub --verify DIR`` checks a directory's files against its manifest. A target directory that
holds someone else's files is refused unless ``--replace`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from musicgen.engine import layout, mbd_weights, stems
from musicgen.errors import MusicGenError, WeightsNotFoundError, reason
from musicgen.manifest import DOWNLOADING, FAILED, NAME, VERIFIED, VERIFYING, FileRecord, Manifest
from musicgen.settings import Settings, repo_id_problem, weights_dir_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conversion:
    """Downloaded files converted once verified: the ones ending in ``suffix`` into ``targets``, by ``run``
    (called with the directory)."""

    suffix: str
    targets: tuple[str, ...]
    run: Callable[[Path], object]


BIN = Conversion(".bin", (layout.SAFETENSORS,), layout.convert_bin)
TH = Conversion(".th", (mbd_weights.SAFETENSORS, mbd_weights.CONFIG), mbd_weights.convert)


@dataclass(frozen=True)
class Weights:
    """A set of weights: its Hub repository, how to choose its files from the repository's file list, what a
    directory lacks to hold them, and the commands that fetch them (for sentences)."""

    what: str
    repo: str
    choose: Callable[[Iterable[str], Callable[[str], dict]], list[str]]
    missing: Callable[[Path], list[str]]
    command: str
    module_command: str
    setting: str  # where a user names the directory
    conversion: Conversion | None = None  # e.g. a .bin checkpoint converted to safetensors once verified


def checkpoint(model: str) -> Weights:
    return Weights("MusicGen checkpoint", model, lambda names, read: layout.choose(names, read, listing=True),
                   layout.missing, f"make weights MODEL={model}", f"python -m musicgen.hub {model}",
                   "--weights (MUSICGEN_WEIGHTS)", BIN)


STEMS = Weights(f"{stems.MODEL_NAME} stem separation bag", stems.HUB_REPO,
                lambda names, read: sorted(n for n in names if any(fnmatch(n, p) for p in stems.HUB_PATTERNS)),
                lambda d: [] if stems.has_weights(d) else [stems.bag_file(d).name + " and its models"],
                "make weights", "python -m musicgen.hub --stems", "MUSICGEN_STEMS_WEIGHTS")

MBD = Weights("MultiBand Diffusion weights", mbd_weights.HUB_REPO,
              lambda names, read: [n for n in names if n == mbd_weights.SOURCE],
              lambda d: [] if mbd_weights.has_weights(d) else [f"{mbd_weights.SAFETENSORS} and {mbd_weights.CONFIG}"],
              "make weights-mbd", "python -m musicgen.hub --mbd", "MUSICGEN_MBD_WEIGHTS", TH)


def holding(directory: Path) -> str | None:
    """What ``directory`` holds, in words for sentences; None when it holds nothing (absent, empty, or only
    huggingface_hub's ``.cache``)."""
    if directory.exists() and not directory.is_dir():
        return "a file, not a directory"
    entries = sorted(p.name for p in directory.iterdir() if p.name != ".cache") if directory.is_dir() else []
    if not entries:
        return None
    manifest = Manifest.read(directory)
    if manifest is not None:
        for known in (STEMS, MBD):
            if manifest.repo == known.repo:
                return f"the {known.what} ({known.repo}) downloaded by this project"
        return f"{manifest.repo or 'a download whose manifest cannot be read'} downloaded by this project"
    if weights_in(directory, None) is STEMS:
        return f"an {STEMS.what} without {NAME} (not downloaded by this project)"
    if (directory / layout.CONFIG).is_file():
        try:
            kind = json.loads((directory / layout.CONFIG).read_text()).get("model_type") or "model"
        except (OSError, ValueError, AttributeError):
            kind = "model"
        return f"a {kind} checkpoint without {NAME} (not downloaded by this project)"
    return f"{len(entries)} file{'s' if len(entries) > 1 else ''} ({', '.join(entries[:3])}) without {NAME}"


def occupant(directory: Path, weights: Weights) -> str | None:
    """What ``directory`` holds when downloading ``weights`` into it would overwrite someone else's files (no
    manifest of this project, or one for another repository); None when it holds nothing or this project's
    download of the same repository (unfinished or damaged ones included: a download repairs them)."""
    manifest = Manifest.read(directory)
    if manifest is not None and manifest.repo in (weights.repo, ""):  # "": our manifest, unreadable
        return None
    return holding(directory)


class Occupied(WeightsNotFoundError):
    """A download refused because its directory holds someone else's files (nothing was written)."""

    def __init__(self, directory: Path, holds: str, weights: Weights):
        self.directory, self.holds, self.weights = directory, holds, weights
        super().__init__(self.sentence())

    def sentence(self, setting: str = "") -> str:
        """The refusal, naming the setting the directory came from (``--dir``, ``MUSICGEN_WEIGHTS``) if any."""
        where = f"{self.directory} ({setting})" if setting else str(self.directory)
        repo = self.weights.repo
        return (f"{where} already holds {self.holds}, not {repo}, so nothing was downloaded: pass --replace "
                f"(`{self.weights.module_command} --replace`) to download {repo} over its files, or choose an "
                "empty directory with --dir.")


def weights_in(directory: Path, default: Weights | None) -> Weights | None:
    """The weights ``directory`` is for: its manifest's repository, else the stem separation bag when it holds
    one (and no checkpoint config), else ``default``."""
    manifest = Manifest.read(directory)
    if manifest is not None and manifest.repo:
        return {STEMS.repo: STEMS, MBD.repo: MBD}.get(manifest.repo) or checkpoint(manifest.repo)
    if manifest is None and stems.has_weights(directory) and not (directory / layout.CONFIG).is_file():
        return STEMS
    return default


def repo_of(directory: Path, default: str) -> str:
    """The repository a directory is for: its manifest's, else the one its config names, else ``default``."""
    manifest = Manifest.read(directory)
    if manifest is not None and manifest.repo:
        return manifest.repo
    try:
        name = json.loads((directory / layout.CONFIG).read_text()).get("_name_or_path", "")
    except (OSError, ValueError, AttributeError):
        name = ""
    return name if isinstance(name, str) and name.count("/") == 1 and not Path(name).exists() else default


def problems(directory: Path, weights: Weights, revision: str | None = None) -> list[str]:
    """Why ``directory`` may not be used for ``weights`` ([] when it may): the cheap checks of every start."""
    manifest = Manifest.read(directory)
    if manifest is None:
        return [f"{name} is missing" for name in weights.missing(directory)]
    found = manifest.size_problems(directory)
    if manifest.state == FAILED:
        found = [f"{', '.join(manifest.damaged)} failed verification"] + found
    elif manifest.state != VERIFIED:
        found = [f"its {'download' if manifest.state == DOWNLOADING else 'verification'} did not finish"] + found
    if revision and revision not in (manifest.revision, manifest.commit):
        found.append(f"it holds {manifest.revision} ({manifest.commit[:12]}), not MUSICGEN_REVISION={revision}")
    return found


def download(weights: Weights, directory: Path, revision: str | None = None, replace: bool = False) -> Manifest:
    """Download ``weights`` at ``revision`` (default main, resolved once to a commit) into ``directory``:
    resumes partial files, replaces damaged ones, verifies every file's size and hash, converts a ``.bin``
    checkpoint to safetensors, and records it all in the manifest. WeightsNotFoundError when a file does not
    verify (the directory is then marked unusable); Occupied, before anything is written, when ``directory``
    holds someone else's files (see ``occupant``) and ``replace`` is not given. The directory is created only
    once the Hub has answered with the repository's listing."""
    from huggingface_hub import HfApi, hf_hub_download

    revision = revision or "main"
    holds = occupant(directory, weights)
    if holds is not None and not replace:
        raise Occupied(directory, holds, weights)
    info = HfApi().model_info(weights.repo, revision=revision, files_metadata=True)
    directory.mkdir(parents=True, exist_ok=True)
    listing = {s.rfilename: s for s in info.siblings or []}
    previous = Manifest.read(directory)
    _remove(directory, previous.damaged if previous else [])  # kept as they are, they would be used again
    manifest = Manifest(weights.repo, revision, info.sha, DOWNLOADING)
    manifest.save(directory)  # from here on, an interruption leaves the directory marked unusable
    log.info("downloading %s at %s (%s) into %s", weights.repo, revision, info.sha, directory)

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(weights.repo, name, revision=info.sha, local_dir=str(directory)))

    def read_index(name: str) -> dict:
        return json.loads(fetch(name).read_text())

    names = weights.choose(listing, read_index)
    if not any(not layout.is_support_file(n) for n in names):
        raise WeightsNotFoundError(f"{weights.repo} at {revision} holds no {weights.what} this project can load.")
    for name in names:
        sibling = listing[name]
        manifest.files[name] = FileRecord(sibling.size, sibling.lfs.sha256 if sibling.lfs else None,
                                          None if sibling.lfs else sibling.blob_id)
    manifest.save(directory)
    _remove(directory, [n for n, r in manifest.files.items()
                        if (directory / n).is_file() and (directory / n).stat().st_size != r.size])
    for attempt in (1, 2):
        for name in names:
            fetch(name)
        try:
            verify(directory, manifest, weights)
            break
        except WeightsNotFoundError:
            if attempt == 2:
                raise
            # a file kept from before may have been damaged on disk since: fetch what failed once more
            _remove(directory, manifest.damaged)
    sources = [n for n in names if weights.conversion and n.endswith(weights.conversion.suffix)]
    if sources:
        _convert(directory, manifest, weights.conversion, sources,
                 previous if previous and previous.commit == info.sha else None)
    manifest.state = VERIFIED
    manifest.save(directory)
    log.info("verified %s (%s) in %s", weights.repo, info.sha, directory)
    return manifest


def _remove(directory: Path, names: list[str]) -> None:
    """Delete files so that the download fetches them anew (huggingface_hub keeps a file it fetched before)."""
    for name in names:
        if (directory / name).is_file():
            log.info("replacing %s", name)
            (directory / name).unlink()


def _convert(directory: Path, manifest: Manifest, conversion: Conversion, sources: list[str],
             previous: Manifest | None) -> None:
    """Record the ``conversion``'s targets (``model.safetensors`` from ``.bin`` files, the MBD weights from
    their ``.th``) converted from ``sources``: the ones a previous download of the same commit made when all are
    intact (by size; not named damaged), else a new conversion."""
    from musicgen.manifest import sha256

    olds = {name: previous.files.get(name) if previous else None for name in conversion.targets}
    if all(old is not None and old.converted_from == sources and (directory / name).is_file()
           and (directory / name).stat().st_size == old.size and name not in previous.damaged
           for name, old in olds.items()):
        manifest.files.update(olds)
        return
    for name in conversion.targets:
        (directory / name).unlink(missing_ok=True)
    conversion.run(directory)
    for name in conversion.targets:
        target = directory / name
        manifest.files[name] = FileRecord(target.stat().st_size, sha256(target), converted_from=sources)


def verify(directory: Path, manifest: Manifest, weights: Weights) -> None:
    """Check every file's size and hash against ``manifest``, recording the outcome in it: the state stays
    ``verifying`` (unusable) until the check ends, then ``verified``, or ``failed`` with WeightsNotFoundError
    naming the files at fault."""
    manifest.state = VERIFYING
    manifest.save(directory)
    found = manifest.hash_problems(directory)
    manifest.state, manifest.damaged = (FAILED, sorted(found)) if found else (VERIFIED, [])
    manifest.save(directory)
    if found:
        raise WeightsNotFoundError(
            f"The {weights.what} for {manifest.repo or weights.repo} in {directory} failed verification "
            f"({'; '.join(list(found.values())[:3])}): run `{weights.command}` ({weights.module_command}) "
            "where the Hugging Face Hub is reachable to repair it.")


class Unavailable(Exception):
    """Weights that are not usable on disk and could not be downloaded; the message says why."""


def download_failure(exc: Exception, repo: str, revision: str | None) -> str:
    """Why a download failed, as a clause (no traceback, no HTTP dump): the repository or revision the Hub does
    not have, else the exception's type and first line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    hub = f"the Hugging Face Hub ({constants.ENDPOINT})"
    at = f" at revision {revision}" if revision and revision != "main" else ""
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo} has no revision {revision} on {hub}"
    if isinstance(exc, GatedRepoError):
        return f"{repo} is gated on {hub}: accept its terms on its page and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return f"there is no repository {repo}{at} on {hub} that can be read (a private one needs HF_TOKEN)"
    return reason(exc).rstrip(".")  # the caller ends the sentence


def fetch(weights: Weights, directory: Path, settings: Settings, allow_download: bool) -> Path:
    """``directory`` once it may be used for ``weights``, downloading (or repairing) them when allowed and
    possible; otherwise Unavailable with the reason (WeightsNotFoundError when a download does not verify, or
    when ``directory`` holds someone else's files that are not usable: those are never written to)."""
    found = problems(directory, weights, settings.revision)
    if not found:
        if Manifest.read(directory) is None:
            log.info("using %s as given: it has no %s (not downloaded by this project), so its files were not "
                     "verified", directory, NAME)
        return directory
    holds = occupant(directory, weights)
    if holds is not None:
        raise WeightsNotFoundError(
            f"{directory} holds {holds} that is not a usable {weights.what} "
            f"({'; '.join(found[:3])}), and it is left as it is: point {weights.setting} at a complete "
            f"{weights.what}, or at a new directory to have {weights.repo} downloaded there.")
    reason = "HF_HUB_OFFLINE is set" if settings.offline else "downloading is disabled"
    if allow_download and not settings.offline:
        try:
            download(weights, directory, settings.revision)
            return directory
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # network, auth, missing repo, interrupted: all end in the same advice
            why = download_failure(exc, weights.repo, settings.revision)
            reason = f"the download failed ({why})"
            log.warning("download of %s failed: %s", weights.repo, why)
    raise Unavailable(reason)


def unusable(weights: Weights, directory: Path, settings: Settings, reason: str) -> str | None:
    """The sentence for a directory that holds (part of) ``weights`` but may not be used; None when it holds
    nothing at all."""
    found = problems(directory, weights, settings.revision)
    holds = directory.is_dir() and any(p.name != ".cache" for p in directory.iterdir())
    if not found or not holds:
        return None
    return (f"The {weights.what} for {weights.repo} in {directory} is not usable ({'; '.join(found[:3])}) and "
            f"{reason}: run `{weights.command}` ({weights.module_command}) where the Hugging Face Hub is "
            "reachable to repair it.")


def locate(settings: Settings, allow_download: bool = True, directory: Path | None = None) -> Path:
    """A directory that may be used for the configured checkpoint (``directory``, else the setting's),
    downloading or repairing it when allowed and possible; else WeightsNotFoundError with one sentence."""
    directory = directory or settings.weights_dir
    other = weights_in(directory, None)
    if other in (STEMS, MBD):
        raise WeightsNotFoundError(
            f"{directory} is the folder of the {other.what} ({other.repo}, the one {other.setting} is for), "
            f"not a MusicGen checkpoint: point --weights (MUSICGEN_WEIGHTS) at the checkpoint's own folder, "
            f"{weights_dir_for(settings.model)} by default, where `{checkpoint(settings.model).command}` puts it.")
    weights = checkpoint(repo_of(directory, settings.model))
    try:
        return fetch(weights, directory, settings, allow_download)
    except Unavailable as exc:
        sentence = unusable(weights, directory, settings, str(exc)) or (
            f"No MusicGen checkpoint found in {directory} and {exc}: run `{weights.command}` "
            f"({weights.module_command}) where the Hugging Face Hub is reachable, or set MUSICGEN_WEIGHTS to a "
            "local checkpoint directory.")
        raise WeightsNotFoundError(sentence) from None


def locate_stems(settings: Settings, allow_download: bool = True) -> Path:
    """Return a directory holding the HTDemucs bag, downloading it when allowed and possible."""
    return _locate(STEMS, settings.stems_dir, settings, allow_download, "Following a melody", "is",
                   "set MUSICGEN_STEMS_WEIGHTS to a directory holding it, or set MUSICGEN_MELODY_STEMS=0 to follow "
                   "the raw mix's melody.")


def locate_mbd(settings: Settings, allow_download: bool = True) -> Path:
    """A directory holding the MultiBand Diffusion weights (converted), downloading them when allowed and
    possible; else WeightsNotFoundError with one sentence."""
    return _locate(MBD, settings.mbd_dir, settings, allow_download,
                   "Decoding with MultiBand Diffusion (MUSICGEN_DECODER=mbd)", "are",
                   "set MUSICGEN_MBD_WEIGHTS to a directory holding them, or set MUSICGEN_DECODER=encodec.")


def _locate(weights, directory: Path, settings: Settings, allow_download: bool, purpose: str, verb: str,
            otherwise: str) -> Path:
    """``weights`` in ``directory`` (fetched when allowed and possible), else one sentence: what ``purpose``
    needs, why it is not there, the command that fetches it, and ``otherwise``."""
    try:
        return fetch(weights, directory, settings, allow_download)
    except Unavailable as exc:
        raise WeightsNotFoundError(
            f"{purpose} needs the {weights.what} ({weights.repo}), which {verb} not usable in {directory} and "
            f"{exc}: run `{weights.command}` ({weights.module_command}) where the Hugging Face Hub is reachable, "
            f"{otherwise}") from None


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return ""


def describe(directory: Path, manifest: Manifest, verified: bool = False) -> str:
    """What a manifest records, for people: the repository, revision and commit, then one line per file, then
    what was done: downloaded (the Hub's files), or ``verified`` (every file's size and hash checked)."""
    lines = [f"{manifest.repo} at {manifest.revision} (commit {manifest.commit}) in {directory}: {manifest.state}"]
    for name, record in sorted(manifest.files.items()):
        how = (f"converted here from {', '.join(record.converted_from)}" if record.converted_from else
               f"sha256 {record.sha256}" if record.sha256 else f"git blob {record.git_sha1}")
        lines.append(f"  {name:40} {_size(record.size):>10}  {how}")
    if verified:
        total = sum(r.size for r in manifest.files.values())
        lines.append(f"  verified: {len(manifest.files)} files, {_size(total)}, every size and hash as recorded")
    else:
        total = sum(r.size for r in manifest.files.values() if not r.converted_from)
        count = sum(not r.converted_from for r in manifest.files.values())
        lines.append(f"  downloaded: {_size(total)} in {count} files")
    return "\n".join(lines)


def verify_directory(directory: Path, weights: Weights) -> str:
    """The on-demand check (``--verify``): every file's hash against the manifest (the outcome recorded in
    it), or, without a manifest, only that the files loading needs are there. The weights checked are the
    ones the directory is for (its manifest's repository, or the stem separation bag it holds), else
    ``weights``. Returns the report; WeightsNotFoundError when something is wrong."""
    weights = weights_in(directory, weights)
    manifest = Manifest.read(directory)
    if manifest is None:
        lacking = weights.missing(directory)
        if lacking:
            raise WeightsNotFoundError(
                f"{directory} is not a complete {weights.what} ({', '.join(lacking)} missing) and has no {NAME} "
                f"(not downloaded by this project): `{weights.module_command} --dir NEW_DIR` downloads one.")
        return (f"{directory} has no manifest (not downloaded by this project): the {weights.what}'s files are "
                "all there, but there is nothing to check their hashes against.")
    verify(directory, manifest, weights)
    return describe(directory, manifest, verified=True)


def main(argv: list[str] | None = None) -> int:
    try:
        env = Settings.from_env()
    except MusicGenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m musicgen.hub", description="Download or verify weights.")
    parser.add_argument("model", nargs="?", default=env.model,
                        help=f"Hub repo id (default MUSICGEN_MODEL, else {env.model})")
    parser.add_argument("--stems", action="store_true",
                        help=f"fetch the {stems.MODEL_NAME} stem separation bag that melody checkpoints use")
    parser.add_argument("--mbd", action="store_true",
                        help="fetch the MultiBand Diffusion decoder's weights (MUSICGEN_DECODER=mbd) and convert "
                             "them once to safetensors")
    parser.add_argument("--dir", type=Path, default=None,
                        help="target directory (default MUSICGEN_WEIGHTS, else weights/<name>; with --stems "
                             "MUSICGEN_STEMS_WEIGHTS, else weights/htdemucs)")
    parser.add_argument("--revision", default=env.revision,
                        help="branch, tag or commit to download (default MUSICGEN_REVISION, else main)")
    parser.add_argument("--replace", action="store_true",
                        help="download even into a directory that holds files this project did not download for "
                             "the same repository (another checkpoint, your own): its files of the same names are "
                             "overwritten; without it such a directory is refused and left as it is")
    parser.add_argument("--verify", type=Path, metavar="DIR", default=None,
                        help="check every file in DIR against its manifest (sizes and hashes), download nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("musicgen").setLevel(logging.INFO)  # our progress lines, not every HTTP request's
    if args.stems and args.mbd:
        print("error: --stems and --mbd fetch different weights: run the command once for each.", file=sys.stderr)
        return 2
    problem = None if args.stems or args.mbd else repo_id_problem(args.model, "MODEL")  # MUSICGEN_MODEL's: checked above
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    weights = STEMS if args.stems else MBD if args.mbd else checkpoint(args.model)
    if args.verify is not None:
        try:
            print(verify_directory(args.verify, weights))
        except WeightsNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.dir is not None:
        target, setting = args.dir, "--dir"
    elif args.stems:
        target, setting = env.stems_dir, "MUSICGEN_STEMS_WEIGHTS" if env.stems_weights is not None else ""
    elif args.mbd:
        target, setting = env.mbd_dir, "MUSICGEN_MBD_WEIGHTS" if env.mbd_weights is not None else ""
    else:
        target, setting = env.weights_dir if env.weights is not None else weights_dir_for(args.model), (
            "MUSICGEN_WEIGHTS" if env.weights is not None else "")
    try:
        manifest = download(weights, target, args.revision, replace=args.replace)
    except Occupied as exc:
        print(f"error: {exc.sentence(setting)}", file=sys.stderr)
        return 1
    except WeightsNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"error: could not download {weights.repo} into {target}: "
              f"{download_failure(exc, weights.repo, args.revision)}.", file=sys.stderr)
        return 1
    print(describe(target, manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
