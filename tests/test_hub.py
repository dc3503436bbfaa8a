"""Every public checkpoint as the Hub publishes it, downloaded through huggingface_hub's real client from a local
stand-in for the Hub (``hub_stand_in``), verified, recorded, and loaded; directories that did not verify are
never used."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cli_session import CliSession
from conftest import ROOT, SR, read
from hub_stand_in import HubStandIn
from musicgen import MusicGen, Settings, WeightsNotFoundError
from musicgen.engine.loading import load
from musicgen_dev.checkpoints import HUB_REPOS, build_random_model, write_hub_layout

REPOS = sorted(HUB_REPOS)
MANIFEST = "musicgen-manifest.json"
# what each repository needs, chosen from its own files: never README, duplicates or stale indexes
SUPPORT = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
NEEDED = {
    "facebook/musicgen-small": ["model.safetensors"],
    "facebook/musicgen-medium": ["pytorch_model.bin"],
    "facebook/musicgen-large": ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                                "pytorch_model.bin.index.json"],
    "facebook/musicgen-melody": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                 "model.safetensors.index.json"],
    "facebook/musicgen-melody-large": [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    + ["model.safetensors.index.json"],
    "facebook/musicgen-stereo-small": ["model.safetensors"],
    "facebook/musicgen-stereo-medium": ["model.safetensors"],
    "facebook/musicgen-stereo-large": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                       "model.safetensors.index.json"],
    "facebook/musicgen-stereo-melody": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                        "model.safetensors.index.json"],
    "facebook/musicgen-stereo-melody-large": [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    + ["model.safetensors.index.json"],
}


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """{repo: (directory with the repo's files as published, the random model they hold)} for the ten repos,
    at tiny widths (one random model per family, each written in every layout of its family)."""
    root = tmp_path_factory.mktemp("hub")
    families, out = {}, {}
    for seed, repo in enumerate(REPOS):
        spec = HUB_REPOS[repo]
        family = (spec["melody"], spec["stereo"])
        if family not in families:
            families[family] = build_random_model(melody=family[0], stereo=family[1], seed=10 + seed)
        model, tokenizer = families[family]
        out[repo] = (write_hub_layout(model, tokenizer, root / repo.split("/")[1], repo), model)
    return out


def _stored(model, fp16: bool) -> dict[str, torch.Tensor]:
    """The model's tensors as a loaded checkpoint holds them: fp16-stored weights come back rounded."""
    return {k: v.half().float() if fp16 and v.is_floating_point() else v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("repo", REPOS)
def test_each_published_layout_is_mapped_with_its_exact_tensors(published, repo, tmp_path, caplog):
    source, model = published[repo]
    directory = shutil.copytree(source, tmp_path / "ckpt")
    before, cache = _snapshot(directory), tmp_path / "cache"
    caplog.set_level(logging.INFO)
    loaded, _ = load(directory, torch.device("cpu"), cache=cache)
    # the fast path took it: a fallback to from_pretrained logs "with transformers" and no "mapped" line
    assert "mapped ckpt from " in caplog.text and "with transformers" not in caplog.text
    expected = _stored(model, HUB_REPOS[repo]["fp16"])
    ours = loaded.state_dict()
    assert set(ours) == set(expected)
    assert all(torch.equal(ours[k], expected[k]) for k in expected)
    positions = dict(loaded.named_buffers())["decoder.model.decoder.embed_positions.weights"]
    assert torch.equal(positions, model.decoder.model.decoder.embed_positions.weights)
    assert _snapshot(directory) == before  # the checkpoint's directory is never written to
    converted = sorted(cache.rglob("*.safetensors"))
    if HUB_REPOS[repo]["files"].startswith("bin"):  # converted once, in the cache: the next start maps it
        assert len(converted) == 1 and converted[0].parent.name.startswith("ckpt-")
        assert f"to {converted[0]} in " in caplog.text
        caplog.clear()
        load(directory, torch.device("cpu"), cache=cache)
        assert "converted" not in caplog.text and "mapped ckpt from model.safetensors" in caplog.text
        assert _snapshot(directory) == before
    else:
        assert converted == []


def _env(hub: HubStandIn, tmp_path: Path, **extra) -> dict:
    return {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "MUSICGEN_DEVICE": "cpu", **extra}


def _session(hub: HubStandIn, tmp_path: Path) -> CliSession:
    """The ``python -m musicgen.hub`` and ``musicgen`` commands against ``hub``, downloading allowed, run one after
    another in one subprocess (tests/cli_session.py: the imports are paid once per test)."""
    return CliSession(_env(hub, tmp_path))


def _generate(cli: CliSession, weights: Path, out: Path, model: str = "facebook/musicgen-melody"):
    """The ``musicgen`` command, weights from MUSICGEN_WEIGHTS, downloading allowed."""
    return cli.musicgen("--prompt", "calm", "--duration", "1", "--seed", "1", "-o", out,
                        MUSICGEN_WEIGHTS=str(weights), MUSICGEN_MODEL=model)


def _offline(directory: Path, model: str = "facebook/musicgen-melody") -> Settings:
    return Settings.from_env(device="cpu", weights=directory, model=model, offline=True)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def test_every_repo_downloads_only_what_it_needs_at_one_recorded_commit(published, tmp_path):
    with HubStandIn({repo: source for repo, (source, _) in published.items()}) as hub:
        script = ("import sys; from musicgen.hub import main\n"
                  "sys.exit(max(main([repo, '--dir', f'{sys.argv[1]}/{repo}']) for repo in sys.argv[2:]))")
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w"), *REPOS], capture_output=True,
                              text=True, env=_env(hub, tmp_path), cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr
        for repo in REPOS:
            directory = tmp_path / "w" / repo
            converted = ["model.safetensors"] if HUB_REPOS[repo]["files"].startswith("bin") else []
            assert _files(directory) == sorted(SUPPORT + NEEDED[repo] + converted + [MANIFEST]), repo
            fetched = {path.rsplit("/", 1)[1] for method, path, _ in hub.requests
                       if method == "GET" and f"/{repo}/resolve/" in path}
            assert fetched == set(SUPPORT + NEEDED[repo]), repo  # no duplicate, README or stale index fetched
            assert all(f"/{repo}/resolve/{hub.commit(repo)}/" in path for method, path, _ in hub.requests
                       if f"/{repo}/resolve/" in path)  # every file at the commit resolved once
            manifest = json.loads((directory / MANIFEST).read_text())
            assert (manifest["repo"], manifest["revision"], manifest["commit"], manifest["state"]) == (
                repo, "main", hub.commit(repo), "verified")
            assert sorted(manifest["files"]) == sorted(SUPPORT + NEEDED[repo] + converted)
            for name, record in manifest["files"].items():
                assert record["size"] == (directory / name).stat().st_size
                lfs = name.endswith((".safetensors", ".bin"))
                assert bool(record["sha256"]) == lfs or record["converted_from"]
                assert bool(record["git_sha1"]) == (not lfs)
            assert f"{repo} at main (commit {hub.commit(repo)})" in proc.stdout
    for repo in ("facebook/musicgen-large", "facebook/musicgen-stereo-small", "facebook/musicgen-melody"):
        service = MusicGen.load(tmp_path / "w" / repo, device="cpu")
        assert service.engine.channels == (2 if HUB_REPOS[repo]["stereo"] else 1)


def test_an_interrupted_download_is_refused_offline_then_resumed(published, tmp_path):
    repo, shard = "facebook/musicgen-melody", "model-00002-of-00002.safetensors"
    directory = tmp_path / "melody"
    with HubStandIn({repo: published[repo][0]}) as hub, _session(hub, tmp_path) as cli:
        hub.cut.add(shard)
        proc = cli.hub(repo, "--dir", directory)
        assert proc.returncode == 1 and "could not download" in proc.stderr
        line = proc.stderr.strip().splitlines()[-1]  # one sentence, ended once (the server's reason ends in its own)
        assert line.startswith(f"error: could not download {repo}") and line.endswith(".") and not line.endswith("..")
        assert json.loads((directory / MANIFEST).read_text())["state"] == "downloading"
        with pytest.raises(WeightsNotFoundError) as refused:
            MusicGen.load(settings=_offline(directory))
        assert str(refused.value) == (
            f"The MusicGen checkpoint for {repo} in {directory} is not usable (its download did not finish; "
            f"{shard} is missing) and HF_HUB_OFFLINE is set: run `make weights MODEL={repo}` "
            f"(python -m musicgen.hub {repo}) where the Hugging Face Hub is reachable to repair it.")
        hub.cut.clear()
        before = {name: len(hub.downloads(name)) for name in NEEDED[repo]}
        out = tmp_path / "song.wav"
        proc = _generate(cli, directory, out)  # the next start repairs it
        assert proc.returncode == 0, proc.stderr
        assert read(out)[0].shape == (1, SR)
        # huggingface_hub 2.4 drops a partial file (its temporary name is unique to the process, PR #4228): the
        # interrupted shard is fetched whole again, the files already complete are kept
        assert hub.downloads(shard)[-1] is None
        others = [n for n in NEEDED[repo] if n != shard]
        assert all(len(hub.downloads(n)) == before[n] for n in others)  # complete files are not fetched again
        assert json.loads((directory / MANIFEST).read_text())["state"] == "verified"


def test_a_shard_that_fails_verification_is_never_used(published, tmp_path, monkeypatch):
    repo, shard = "facebook/musicgen-melody", "model-00001-of-00002.safetensors"
    directory = tmp_path / "melody"
    source = published[repo][0] / shard
    with HubStandIn({repo: published[repo][0]}) as hub, _session(hub, tmp_path) as cli:
        damaged = bytearray(source.read_bytes())
        damaged[-100:] = bytes(100)  # same size, other bytes: only the hash can tell
        hub.corrupt[shard] = bytes(damaged)
        proc = cli.hub(repo, "--dir", directory)
        assert proc.returncode == 1
        assert f"failed verification ({shard} has the wrong sha256): run `make weights MODEL={repo}`" in proc.stderr
        manifest = json.loads((directory / MANIFEST).read_text())
        assert manifest["state"] == "failed" and manifest["damaged"] == [shard]
        # the next start, offline: the Cog predictor's setup, as the server runs it (a setup that raises leaves
        # the server SETUP_FAILED with its sentence in the logs: tests/test_http.py; the musicgen command ends
        # with a start's sentence and exit status 2: the tests of someone else's checkpoint and of stems below)
        for name, value in {"MUSICGEN_WEIGHTS": str(directory), "MUSICGEN_MODEL": repo, "HF_HUB_OFFLINE": "1"}.items():
            monkeypatch.setenv(name, value)
        refused = _predictor_setup_error()
        assert (f"The MusicGen checkpoint for {repo} in {directory} is not usable ({shard} failed verification) "
                f"and HF_HUB_OFFLINE is set: run `make weights MODEL={repo}`") in refused
        hub.corrupt.clear()
        fetched = len(hub.downloads(shard))
        proc = cli.hub(repo, "--dir", directory)  # the command the sentence names
        assert proc.returncode == 0, proc.stderr
        assert len(hub.downloads(shard)) == fetched + 1 and hub.downloads(shard)[-1] is None  # fetched anew
    assert (directory / shard).read_bytes() == source.read_bytes()
    assert json.loads((directory / MANIFEST).read_text())["state"] == "verified"


def _predictor_setup_error() -> str:
    """The sentence of the WeightsNotFoundError that predict.py's setup raises (the root logger, which setup
    configures for Cog, is left as it was)."""
    from predict import Predictor

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with pytest.raises(WeightsNotFoundError) as refused:
            Predictor().setup()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return str(refused.value)


def test_a_file_damaged_after_a_good_download_is_refused_or_repaired(published, tmp_path):
    repo = "facebook/musicgen-small"
    directory = tmp_path / "small"
    weights = directory / "model.safetensors"
    original = (published[repo][0] / "model.safetensors").read_bytes()
    size = len(original)

    def flip() -> None:  # same size: the cheap check at start cannot see it, a hash check does
        data = bytearray(weights.read_bytes())
        data[size // 2] ^= 0xFF
        weights.write_bytes(bytes(data))

    with HubStandIn({repo: published[repo][0]}) as hub, _session(hub, tmp_path) as cli:
        assert cli.hub(repo, "--dir", directory).returncode == 0
        verified = cli.hub("--verify", directory)
        assert verified.returncode == 0 and f"{repo} at main (commit {hub.commit(repo)})" in verified.stdout
        flip()
        assert MusicGen.load(settings=_offline(directory, repo)) is not None
        fetched = len(hub.downloads("model.safetensors"))
        assert cli.hub(repo, "--dir", directory).returncode == 0  # repaired in one run
        assert len(hub.downloads("model.safetensors")) == fetched + 1 and weights.read_bytes() == original
    flip()
    proc = subprocess.run([sys.executable, "-m", "musicgen.hub", "--verify", str(directory)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "model.safetensors has the wrong sha256" in proc.stderr
    with pytest.raises(WeightsNotFoundError, match="model.safetensors failed verification"):
        MusicGen.load(settings=_offline(directory, repo))  # the failed check is recorded: no longer used
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["state"], manifest["damaged"] = "verified", []
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with open(weights, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(WeightsNotFoundError) as refused:
        MusicGen.load(settings=_offline(directory, repo))
    assert f"for {repo} in {directory} is not usable (model.safetensors has {size - 1000} bytes instead of {size})" \
        in str(refused.value) and f"make weights MODEL={repo}" in str(refused.value)


def test_a_directory_given_without_manifest_is_used_unverified(published, tmp_path, caplog):
    repo = "facebook/musicgen-medium"  # pytorch_model.bin only
    directory = shutil.copytree(published[repo][0], tmp_path / "mine")
    before = _snapshot(directory)
    caplog.set_level(logging.INFO, logger="musicgen")
    cache = tmp_path / "cache"
    service = MusicGen.load(settings=replace(_offline(directory), cache=cache))
    assert service.engine.channels == 1
    # its .bin is converted into the cache (MUSICGEN_CACHE), never beside the user's files
    assert _snapshot(directory) == before and len(list(cache.glob("converted/mine-*/model.safetensors"))) == 1
    # no repository is named: the directory's files are not from one this project knows
    assert (f"using {directory} as given: it has no musicgen-manifest.json (not downloaded by this project), so its "
            "files were not verified\n") in caplog.text
    proc = subprocess.run([sys.executable, "-m", "musicgen.hub", "--verify", str(directory)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "has no manifest" in proc.stdout


def test_a_partial_directory_names_the_missing_files_and_its_repository(published, tmp_path):
    repo = "facebook/musicgen-large"
    directory = shutil.copytree(published[repo][0], tmp_path / "large")
    (directory / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(WeightsNotFoundError) as refused:
        MusicGen.load(settings=_offline(directory, repo))
    # not this project's download: never repaired in place, so the sentence does not offer `make weights` into it
    assert str(refused.value) == (
        f"{directory} holds a musicgen checkpoint without musicgen-manifest.json (not downloaded by this project) "
        "that is not a usable MusicGen checkpoint (pytorch_model-00002-of-00002.bin is missing), and it is left as "
        "it is: point --weights (MUSICGEN_WEIGHTS) at a complete MusicGen checkpoint, or at a new directory to have "
        f"{repo} downloaded there.")


def test_a_pinned_revision_is_downloaded_recorded_and_required(published, tmp_path):
    repo = "facebook/musicgen-stereo-small"
    directory = tmp_path / "stereo"
    with HubStandIn({repo: published[repo][0]}) as hub, _session(hub, tmp_path) as cli:
        commit = hub.commit(repo)
        assert cli.hub(repo, "--dir", directory, MUSICGEN_REVISION="v9").returncode == 1
        proc = cli.hub(repo, "--dir", directory, MUSICGEN_REVISION=commit)
        assert proc.returncode == 0, proc.stderr
        assert f"{repo} at {commit} (commit {commit})" in proc.stdout
        hub.corrupt["config.json"] = published[repo][0].joinpath("config.json").read_bytes().replace(b"{", b" ", 1)
        other = tmp_path / "other"
        proc = cli.hub(repo, "--dir", other)  # small files: checked by their git blob id
        assert proc.returncode == 1 and "(config.json has the wrong git blob sha1)" in proc.stderr
    assert MusicGen.load(settings=Settings.from_env(device="cpu", weights=directory, offline=True,
                                                    revision=commit)).engine.channels == 2
    with pytest.raises(WeightsNotFoundError, match=rf"it holds {commit} \({commit[:12]}\), not MUSICGEN_REVISION=v2"):
        MusicGen.load(settings=Settings.from_env(device="cpu", weights=directory, offline=True, revision="v2"))


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``directory`` (recursively) with its bytes and modification time."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_directory_holding_someone_elses_checkpoint_is_never_downloaded_into(published, tmp_path):
    melody, small, stereo = "facebook/musicgen-melody", "facebook/musicgen-small", "facebook/musicgen-stereo-small"
    mine = shutil.copytree(published[small][0], tmp_path / "mine")  # a user's text checkpoint, no manifest
    for weights in [*mine.glob("*.safetensors"), *mine.glob("*.bin")]:  # incomplete: a start would want to repair it
        weights.unlink()
    before = _snapshot(mine)
    with HubStandIn({repo: published[repo][0] for repo in (melody, small, stereo)}) as hub, \
            _session(hub, tmp_path) as cli:
        proc = cli.hub(MUSICGEN_WEIGHTS=str(mine))  # what `make weights` runs, the README's setting
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"error: {mine} (MUSICGEN_WEIGHTS) already holds a musicgen checkpoint without musicgen-manifest.json "
            f"(not downloaded by this project), not {melody}, so nothing was downloaded: pass --replace "
            f"(`python -m musicgen.hub {melody} --replace`) to download {melody} over its files, or choose an empty "
            "directory with --dir.")
        out = tmp_path / "song.wav"
        proc = _generate(cli, mine, out)  # a start that may download does not either
        assert proc.returncode != 0 and not out.exists()
        assert proc.stderr.strip().splitlines()[-1] == (
            f"error: {mine} holds a musicgen checkpoint without musicgen-manifest.json "
            f"(not downloaded by this project) that is not a usable MusicGen checkpoint (model.safetensors (or "
            f"pytorch_model.bin) is missing), and it is left as it is: point --weights (MUSICGEN_WEIGHTS) at a "
            f"complete MusicGen checkpoint, or at a new directory to have {melody} downloaded there.")
        assert _snapshot(mine) == before and not any("/resolve/" in path for _, path, _ in hub.requests)

        ours = tmp_path / "ours"  # this project's download of another repository
        assert cli.hub(small, "--dir", ours).returncode == 0
        kept = _snapshot(ours)
        proc = cli.hub(stereo, "--dir", ours)
        assert proc.returncode == 1 and proc.stderr.strip() == (
            f"error: {ours} (--dir) already holds {small} downloaded by this project, not {stereo}, so nothing was "
            f"downloaded: pass --replace (`python -m musicgen.hub {stereo} --replace`) to download {stereo} over "
            "its files, or choose an empty directory with --dir.")
        assert _snapshot(ours) == kept
        assert cli.hub(small, "--dir", ours).returncode == 0  # the same one: repaired, kept
        proc = cli.hub(stereo, "--dir", ours, "--replace")  # asked for: replaced
        assert proc.returncode == 0, proc.stderr
        assert json.loads((ours / MANIFEST).read_text())["repo"] == stereo
    assert MusicGen.load(ours, device="cpu").engine.channels == 2


def test_a_stems_folder_given_as_the_checkpoint_says_so(stems_weights, tmp_path):
    bag = tmp_path / "htdemucs"
    with HubStandIn({"adefossez/HTDemucs": stems_weights}) as hub, _session(hub, tmp_path) as cli:
        proc = cli.hub("--stems", "--dir", bag)
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / "song.wav"
        for folder in (bag, stems_weights):  # this project's download of the bag, and one without manifest
            proc = _generate(cli, folder, out)
            assert proc.returncode == 2 and not out.exists() and "Traceback" not in proc.stderr
            assert proc.stderr.strip().splitlines()[-1] == (
                f"error: {folder} is the folder of the htdemucs stem separation bag (adefossez/HTDemucs, the one "
                "MUSICGEN_STEMS_WEIGHTS is for), not a MusicGen checkpoint: point --weights (MUSICGEN_WEIGHTS) at "
                f"the checkpoint's own folder, {ROOT / 'weights' / 'musicgen-melody'} by default, where "
                "`make weights MODEL=facebook/musicgen-melody` puts it.")
        assert not (bag / "config.json").exists() and not (stems_weights / "config.json").exists()
        # --verify checks the bag as a bag: what it did, not what a download did, and no musicgen-melody advice
        proc = cli.hub("--verify", bag)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert lines[0] == f"adefossez/HTDemucs at main (commit {hub.commit('adefossez/HTDemucs')}) in {bag}: verified"
        size = sum(p.stat().st_size for p in stems_weights.iterdir())
        assert lines[-1] == f"  verified: 2 files, {size / 1e6:.2f} MB, every size and hash as recorded"
        assert "downloaded" not in proc.stdout
        proc = cli.hub("--verify", stems_weights)
        assert proc.returncode == 0 and proc.stdout.strip() == (
            f"{stems_weights} has no manifest (not downloaded by this project): the htdemucs stem separation bag's "
            "files are all there, but there is nothing to check their hashes against.")
        (bag / "htdemucs.yaml").unlink()
        proc = cli.hub("--verify", bag)
        assert proc.returncode == 1 and proc.stderr.strip() == (
            f"error: The htdemucs stem separation bag for adefossez/HTDemucs in {bag} failed verification "
            "(htdemucs.yaml is missing): run `make weights` (python -m musicgen.hub --stems) where the Hugging Face "
            "Hub is reachable to repair it.")


def test_an_unknown_or_invalid_repository_is_refused_in_one_sentence(published, tmp_path):
    repo = "facebook/musicgen-small"
    target = tmp_path / "weights" / "nothing"
    with HubStandIn({repo: published[repo][0]}) as hub, _session(hub, tmp_path) as cli:
        proc = cli.hub("facebook/musicgen-nothing", "--dir", target)
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"error: could not download facebook/musicgen-nothing into {target}: there is no repository "
            f"facebook/musicgen-nothing on the Hugging Face Hub ({hub.url}) that can be read (a private one needs "
            "HF_TOKEN).")
        assert not (tmp_path / "weights").exists()  # nothing left behind
        asked = len(hub.requests)
        proc = cli.hub(MUSICGEN_MODEL="not a repo")
        assert proc.returncode == 2 and proc.stderr.strip() == (
            "error: MUSICGEN_MODEL must be a Hugging Face Hub repository id (owner/name: letters, digits, '-', '_', "
            "'.'), such as facebook/musicgen-small, got 'not a repo'.")
        proc = cli.hub("not a repo")
        assert proc.returncode == 2 and proc.stderr.strip() == (
            "error: MODEL must be a Hugging Face Hub repository id (owner/name: letters, digits, '-', '_', '.'), "
            "such as facebook/musicgen-small, got 'not a repo'.")
        out = tmp_path / "song.wav"
        proc = _generate(cli, tmp_path / "w", out, model="not a repo")
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
            "error: MUSICGEN_MODEL must be a Hugging Face Hub repository id (owner/name: letters, digits, '-', '_', "
            "'.'), such as facebook/musicgen-small, got 'not a repo'.")
        assert len(hub.requests) == asked and not (tmp_path / "w").exists()  # refused before asking the Hub
