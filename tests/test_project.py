"""Project surfaces: the predictor's public signature against SPEC.md, cog.yaml against Cog's schema, pinned
requirements, the CLI, and setup() without weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import yaml

from conftest import ROOT, SR, read

SHARED = ROOT.parent / "shared"

# SPEC.md's input table: name -> (primitive, optional, default, ge, le, choices), in order.
SPEC_INPUTS = {
    "prompt": ("STRING", True, None, None, None, None),
    "input_audio": ("PATH", True, None, None, None, None),
    "duration": ("INTEGER", False, 8, 1, 300, None),
    "continuation": ("BOOL", False, False, None, None, None),
    "continuation_start": ("INTEGER", False, 0, 0, None, None),
    "continuation_end": ("INTEGER", True, None, -1, None, None),
    "normalization_strategy": ("STRING", False, "loudness", None, None, ["loudness", "clip", "peak", "rms"]),
    "top_k": ("INTEGER", False, 250, 0, None, None),
    "top_p": ("FLOAT", False, 0.0, 0, 1, None),
    "temperature": ("FLOAT", False, 1.0, 0, None, None),
    "classifier_free_guidance": ("INTEGER", False, 3, 0, None, None),
    "output_format": ("STRING", False, "wav", None, None, ["wav", "mp3"]),
    "seed": ("INTEGER", True, None, -1, 2**32 - 1, None),
}


def test_predictor_inputs_match_spec_exactly():
    from cog import _inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = _inspector.create_predictor("predict", "Predictor")
    fields = sorted(info.inputs.values(), key=lambda f: f.order)
    assert [f.name for f in fields] == list(SPEC_INPUTS)
    for f in fields:
        primitive, optional, default, ge, le, choices = SPEC_INPUTS[f.name]
        assert f.type.primitive.name == primitive, f.name
        assert (f.type.repetition.name == "OPTIONAL") == optional, f.name
        assert f.default == default and type(f.default) is type(default), f.name
        assert f.ge == ge and f.le == le, f.name
        assert f.choices == choices, f.name
        assert f.description, f.name
    assert info.output.kind.name == "LIST" and info.output.type.name == "PATH"


def test_descriptions_keep_the_seed_pages_wording():
    from cog import _inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = _inspector.create_predictor("predict", "Predictor")
    page = " ".join((SHARED / "reference" / "seed-musicgen-api.txt").read_text().split())
    for field in info.inputs.values():
        assert " ".join(field.description.split()) in page, field.name


def test_cog_yaml_is_valid_against_cogs_schema():
    import jsonschema

    schema = json.loads((SHARED / "reference" / "cog-config-schema-v1.0.json").read_text())
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["build"]["gpu"] is True
    assert str(config["build"]["python_version"]) == "3.11"
    assert config["predict"] == "predict.py:Predictor"
    assert (ROOT / config["build"]["python_requirements"]).is_file()


def test_every_requirement_is_pinned():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r "):
                assert "==" in line, f"{name}: {line} is not pinned"
    pins = dict(l.split("==") for l in (ROOT / "requirements.txt").read_text().split() if "==" in l)
    assert pins["torch"] == "2.13.0" and pins["cog"] == "0.23.1" and pins["transformers"].startswith("5.")


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "musicgen", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=300)


def test_cli_generates_a_file_with_progress(checkpoints, tmp_path):
    out = tmp_path / "song.mp3"
    proc = _cli("--prompt", "calm piano", "--duration", "2", "--seed", "9", "--weights",
                str(checkpoints["plain"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "generating [" in proc.stderr and "seed 9" in proc.stderr
    wav, sr = read(out)
    assert sr == SR and abs(wav.shape[1] - 2 * SR) <= 1152


def test_cli_writes_into_a_directory(checkpoints, tmp_path):
    proc = _cli("--duration", "1", "--seed", "1", "-o", str(tmp_path / "outs"),
                env={"MUSICGEN_WEIGHTS": str(checkpoints["melody"])})
    assert proc.returncode == 0, proc.stderr
    files = list((tmp_path / "outs").iterdir())
    assert len(files) == 1 and files[0].suffix == ".wav"


def test_cli_reports_bad_input_in_one_line(checkpoints):
    proc = _cli("--duration", "0", "--weights", str(checkpoints["plain"]))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: duration must be a whole number of seconds from 1 to 300, got 0."


def test_missing_weights_give_one_clear_sentence(tmp_path):
    empty = tmp_path / "nothing-here"
    proc = _cli("--prompt", "x", env={"MUSICGEN_WEIGHTS": str(empty), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    msg = proc.stderr.strip().splitlines()[-1]
    assert msg.startswith(f"error: No MusicGen checkpoint found in {empty} and HF_HUB_OFFLINE is set")
    assert "make weights" in msg and "MUSICGEN_WEIGHTS" in msg


def test_setup_without_weights_fails_naming_the_folder_and_command(tmp_path, monkeypatch):
    from musicgen import WeightsNotFoundError
    from predict import Predictor

    monkeypatch.setenv("MUSICGEN_WEIGHTS", str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"No MusicGen checkpoint found in .*missing.*make weights"):
        Predictor().setup()


def test_default_weights_folder_follows_the_model_name(monkeypatch):
    from musicgen import weights

    monkeypatch.delenv("MUSICGEN_WEIGHTS", raising=False)
    monkeypatch.delenv("MUSICGEN_MODEL", raising=False)
    assert weights.weights_dir() == ROOT / "weights" / "musicgen-melody"
    monkeypatch.setenv("MUSICGEN_MODEL", "facebook/musicgen-stereo-small")
    assert weights.weights_dir() == ROOT / "weights" / "musicgen-stereo-small"


def test_committed_openapi_schema_is_in_sync_with_predict_py():
    from musicgen.cog_schema import SCHEMA_PATH, build_schema, render

    assert SCHEMA_PATH.is_file(), "run `python -m musicgen.cog_schema`"
    assert SCHEMA_PATH.read_text() == render(build_schema()), "run `python -m musicgen.cog_schema`"


def test_openapi_schema_describes_every_spec_input():
    from musicgen.cog_schema import SCHEMA_PATH

    schemas = json.loads(SCHEMA_PATH.read_text())["components"]["schemas"]
    props = schemas["Input"]["properties"]
    assert list(props) == list(SPEC_INPUTS)
    assert "required" not in schemas["Input"]  # every input has a default
    json_types = {"STRING": "string", "PATH": "string", "INTEGER": "integer", "BOOL": "boolean", "FLOAT": "number"}
    for name, (primitive, optional, default, ge, le, choices) in SPEC_INPUTS.items():
        prop = props[name]
        assert prop["x-order"] == list(SPEC_INPUTS).index(name)
        assert prop["default"] == default and prop.get("nullable", False) == optional, name
        assert prop.get("minimum") == ge and prop.get("maximum") == le, name
        if choices:
            enum = schemas[prop["allOf"][0]["$ref"].rsplit("/", 1)[1]]
            assert enum["enum"] == choices and enum["type"] == "string"
        else:
            assert prop["type"] == json_types[primitive], name
    assert props["input_audio"]["format"] == "uri"
    assert schemas["Output"] == {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


def test_precision_and_device_settings_are_checked(monkeypatch):
    import torch

    from musicgen import MusicGenError, weights

    cpu = torch.device("cpu")
    assert weights.pick_precision(cpu, "auto") == weights.default_precision(cpu) == "int8"
    assert weights.pick_precision(cpu, "fp32") == "fp32"
    monkeypatch.setenv("MUSICGEN_PRECISION", "int4")
    assert weights.pick_precision(cpu) == "int4"
    with pytest.raises(MusicGenError, match="MUSICGEN_PRECISION must be one of auto, fp32, bf16, fp16, int8, int4"):
        weights.pick_precision(cpu, "fp8")
    with pytest.raises(MusicGenError, match="MUSICGEN_PRECISION=int8 is a CPU option"):
        weights.pick_precision(torch.device("cuda"), "int8")
    with pytest.raises(MusicGenError, match="MUSICGEN_DEVICE must be one of auto, cpu, cuda"):
        weights.pick_device("tpu")


def test_downloaded_checkpoint_is_verified_against_hub_metadata(checkpoints, tmp_path):
    import hashlib
    import shutil

    from musicgen import WeightsNotFoundError, weights

    copy = shutil.copytree(checkpoints["plain"], tmp_path / "ckpt")
    expected = {p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest() if p.suffix == ".safetensors" else None)
                for p in copy.iterdir()}
    weights.verify(copy, expected, "facebook/musicgen-small")  # intact: no error
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsNotFoundError, match=r"does not match facebook/musicgen-small \(model.safetensors has the wrong sha256\); delete"):
        weights.verify(copy, expected, "facebook/musicgen-small")
    (copy / "config.json").write_text("{}")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"config.json has 2 bytes instead of \d+; model.safetensors has the wrong sha256; tokenizer.json is missing"):
        weights.verify(copy, expected, "facebook/musicgen-small")
