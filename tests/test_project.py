"""Project surfaces: the predictor's inputs against the contract (docs/api.md) and musicgen/inputs.py, predict.py
readable by Cog's static schema generator, cog.yaml against Cog's schema, pinned requirements, the `musicgen`
command, settings, and setup() without weights."""

from __future__ import annotations

import ast
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tokenize
import warnings
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from conftest import DATA, ROOT, SR, read, readme_block, tone
from musicgen import MusicGenError, WeightsNotFoundError
from musicgen.inputs import INPUTS, SPECS

# The contract's input table (docs/api.md): name -> (Cog primitive, optional, default, ge, le, choices), in order.
CONTRACT = {
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
PRIMITIVES = {str: "STRING", Path: "PATH", int: "INTEGER", bool: "BOOL", float: "FLOAT"}


def _predictor_info():
    from cog import _inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _inspector.create_predictor("predict", "Predictor")


def test_library_inputs_are_the_contract():
    from musicgen.request import GenerationRequest

    assert [s.name for s in INPUTS] == list(CONTRACT)
    for spec in INPUTS:
        primitive, optional, default, ge, le, choices = CONTRACT[spec.name]
        assert (PRIMITIVES[spec.type], spec.optional, spec.default, spec.ge, spec.le) == (
            primitive, optional, default, ge, le), spec.name
        assert type(spec.default) is type(default), spec.name
        assert (list(spec.choices) if spec.choices else None) == choices, spec.name
    # the request's fields are the inputs, in order, with their defaults
    import dataclasses

    fields = dataclasses.fields(GenerationRequest)
    assert [(f.name, f.default) for f in fields if not f.kw_only] == [(s.name, s.default) for s in INPUTS]


def test_contract_document_lists_the_inputs_in_order():
    doc = (ROOT / "docs" / "api.md").read_text()
    table = doc.split("## Inputs", 1)[1].split("\n\n", 2)[1]
    names = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert names == list(CONTRACT)


def test_predictor_declares_exactly_the_library_inputs():
    info = _predictor_info()
    fields = sorted(info.inputs.values(), key=lambda f: f.order)
    assert [f.name for f in fields] == [s.name for s in INPUTS]
    for f in fields:
        spec = SPECS[f.name]
        assert f.type.primitive.name == PRIMITIVES[spec.type], f.name
        assert (f.type.repetition.name == "OPTIONAL") == spec.optional, f.name
        assert f.default == spec.default and type(f.default) is type(spec.default), f.name
        assert (f.ge, f.le) == (spec.ge, spec.le), f.name
        assert f.choices == (list(spec.choices) if spec.choices else None), f.name
        assert f.description == spec.description, f.name
    # files yielded one by one (Cog streams them; a plain response is their array, as the seed's List[Path])
    assert info.output.kind.name == "ITERATOR" and info.output.type.name == "PATH"


def test_predict_py_is_readable_by_cogs_static_schema_generator():
    """`cog build` parses predict.py without running it: Input() arguments must be plain literals, and a
    description one string literal (an implicitly concatenated one would reach the schema with quotes)."""
    source = (ROOT / "predict.py").read_text()
    predict = next(node for node in ast.walk(ast.parse(source))
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "predict")
    calls = [d for d in predict.args.defaults if isinstance(d, ast.Call)]
    assert len(calls) == len(INPUTS) and all(getattr(c.func, "id", None) == "Input" for c in calls)
    for call in calls:
        for keyword in call.keywords:
            value = keyword.value
            segment = ast.get_source_segment(source, value)
            if keyword.arg in ("ge", "le"):  # Cog parses the source text as a float ("-1" included)
                assert float(segment) == ast.literal_eval(value), keyword.arg
            elif keyword.arg == "choices":
                assert isinstance(value, ast.List) and all(isinstance(e, ast.Constant) for e in value.elts)
            else:
                assert isinstance(value, ast.Constant), keyword.arg
            if keyword.arg == "description":
                tokens = [t for t in tokenize.generate_tokens(io.StringIO(segment).readline)
                          if t.type == tokenize.STRING]
                assert len(tokens) == 1, f"description split over {len(tokens)} string literals"


def test_descriptions_keep_the_seed_pages_wording():
    page = " ".join((DATA / "seed-musicgen-api.txt").read_text().split())
    for spec in INPUTS:
        assert " ".join(spec.description.split()) in page, spec.name


def test_cog_yaml_is_valid_against_cogs_schema():
    import jsonschema

    schema = json.loads((DATA / "cog-config-schema-v1.0.json").read_text())
    config = yaml.safe_load((ROOT / "cog.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["build"]["gpu"] is True
    assert config["build"]["cuda"] == "13.0"  # torch 2.13.0's wheel: cuda-toolkit 13.0.3
    assert str(config["build"]["python_version"]) == "3.11"
    assert config["predict"] == "predict.py:Predictor"
    assert (ROOT / config["build"]["python_requirements"]).is_file()
    # concurrent predictions: an async (generator) predict whose decorator says what cog.yaml says
    from predict import Predictor

    assert inspect.isasyncgenfunction(Predictor.predict)
    assert Predictor.predict.__cog_concurrent_max__ == config["concurrency"]["max"] == 8


def test_every_requirement_is_pinned():
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-nodeps.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r "):
                assert "==" in line, f"{name}: {line} is not pinned"
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split() if "==" in line)
    assert pins["torch"] == "2.13.0" and pins["cog"] == "0.23.1" and pins["transformers"].startswith("5.")
    # what is installed without its dependencies: the same pins in scripts/setup.sh's file and cog.yaml
    nodeps = [line for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    run = yaml.safe_load((ROOT / "cog.yaml").read_text())["build"]["run"]
    assert run[0] == f"pip install --no-deps {' '.join(nodeps)}"
    assert run[1:] == ["chmod -R o+rX /root"]  # the non-root user of deploy/kubernetes reads Python there


def test_the_repository_reads_nothing_outside_itself():
    """Code, tests, docs and scripts name only files of the repository (a clone alone must work)."""
    outside = ("../" + "shared", "SPEC" + ".md")  # spelt apart so that this file does not match itself
    offenders = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*.md"), *ROOT.glob("*.toml"), *ROOT.glob("*.yaml")] + [
            p for d in ("musicgen", "musicgen_dev", "tests", "bench", "scripts", "docs", ".ci")
            for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".sh", "")]:
        text = path.read_text(errors="replace")
        if any(word in text for word in outside):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


# ---------------------------------------------------------------- the musicgen command
def _cli(*args, env=None, cwd=None):
    command = Path(sys.executable).parent / "musicgen"  # the console script pyproject.toml installs
    return subprocess.run([str(command), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=300)


def test_cli_generates_a_file_with_progress(checkpoints, tmp_path):
    out = tmp_path / "song.mp3"
    proc = _cli("--prompt", "calm piano", "--duration", "2", "--seed", "9", "--weights",
                str(checkpoints["plain"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "generating: 100%" in proc.stderr and "seed 9" in proc.stderr  # tqdm's bar, ended
    wav, sr = read(out)
    assert sr == SR and abs(wav.shape[1] - 2 * SR) <= 1152


def test_cli_writes_into_a_directory(checkpoints, tmp_path):
    proc = _cli("--duration", "1", "--seed", "1", "-o", str(tmp_path / "outs"),
                env={"MUSICGEN_WEIGHTS": str(checkpoints["melody"])})
    assert proc.returncode == 0, proc.stderr
    files = list((tmp_path / "outs").iterdir())
    assert len(files) == 1 and files[0].suffix == ".wav" and files[0].name.startswith("musicgen-1-")


def test_the_readmes_cli_commands_run_as_written(checkpoints, tmp_path):
    """The README's two `musicgen` lines, run by bash: a positional prompt, then the continuation of its
    output; each prints the file it wrote, and the internal file name appears nowhere."""
    script = readme_block("--continuation-start").replace(".venv/bin/musicgen", str(Path(sys.executable).parent / "musicgen"))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MUSICGEN_WEIGHTS": str(checkpoints["plain"])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["outputs/ambient.mp3", "outputs/more.wav"]
    assert "musicgen-7-" not in done.stderr and "seed 7" in done.stderr
    assert done.stderr.count("generating:   0%") == 2 and "generating: 100%" in done.stderr
    wav, sr = read(tmp_path / "outputs" / "ambient.mp3")
    assert sr == SR and abs(wav.shape[1] - 8 * SR) <= 1152
    assert sf.info(str(tmp_path / "outputs" / "more.wav")).frames == 10 * SR


def test_the_readmes_library_example_runs_as_written(checkpoints, tmp_path):
    """The README's Python block, with the tiny checkpoint's path for weights/musicgen-melody."""
    text = (ROOT / "README.md").read_text()
    [code] = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python\n")]
    code = code.replace('"weights/musicgen-melody"', repr(str(checkpoints["melody"])))
    code += "print(result.paths[0], result.seed, sorted(result.timings))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path, seed, timings = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert seed == "1" and timings == "['audio_in', 'generate', 'output', 'total']"
    assert Path(path).parent == Path("outputs")  # output_dir: the file outlives the process
    assert (tmp_path / path).stat().st_size > 8 * SR * 2


def test_cli_takes_the_prompt_once():
    from musicgen.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["lofi beat", "--prompt", "jazz"])
    assert exit_.value.code == 2


def test_cli_help_shows_the_defaults():
    from musicgen.cli import build_batch_parser, build_parser

    text = " ".join(build_parser().format_help().split())
    assert "(default: 8)" in text and "(default: 250)" in text and "(default: loudness)" in text
    assert "(default: None)" not in text
    assert "(default: None)" not in " ".join(build_batch_parser().format_help().split())


def test_batch_ray_flag_cannot_take_the_requests_file():
    from musicgen.cli import build_batch_parser

    parser = build_batch_parser()
    args = parser.parse_args(["--ray", "jobs.jsonl", "-o", "out"])
    assert (args.requests, args.ray, args.ray_address) == (Path("jobs.jsonl"), True, None)
    args = parser.parse_args(["jobs.jsonl", "-o", "out", "--ray-address", "ray://head:10001"])
    assert (args.requests, args.ray, args.ray_address) == (Path("jobs.jsonl"), False, "ray://head:10001")


def test_cli_flags_are_the_inputs_with_their_defaults():
    from musicgen.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([])
    for spec in INPUTS:
        expected = None if spec.name == "output_format" else spec.default  # follows -o's extension
        assert getattr(args, spec.name) == expected, spec.name
    args = parser.parse_args(["--continuation", "--continuation-end", "none", "--seed", "-1", "--top-p", "0.5"])
    assert (args.continuation, args.continuation_end, args.seed, args.top_p) == (True, None, -1, 0.5)


def test_cli_continuation_duration_is_the_whole_output_prompt_included(checkpoints, tmp_path):
    sf.write(tmp_path / "three.wav", tone([440.0, 330.0], 3.0), SR)
    sf.write(tmp_path / "ten.wav", tone([440.0, 330.0], 10.0), SR)
    weights = str(checkpoints["plain"])
    proc = _cli("--input-audio", str(tmp_path / "three.wav"), "--continuation", "--duration", "8", "--seed", "1",
                "--weights", weights, "-o", str(tmp_path / "out.wav"))
    assert proc.returncode == 0, proc.stderr
    assert sf.info(str(tmp_path / "out.wav")).frames == 8 * SR  # 8.000 s: the 3 s prompt and 5 s new
    proc = _cli("--input-audio", str(tmp_path / "ten.wav"), "--continuation", "--duration", "8", "--weights", weights)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: The continuation prompt (10.00 s of --input-audio) must be shorter than --duration (8 s), which is "
        "the length of the whole output, prompt included; set --duration to 11 or more, or choose a shorter part "
        "with --continuation-start and --continuation-end.")  # the command's own flags, as its other checks say


def test_cli_reports_bad_input_in_one_line(checkpoints):
    proc = _cli("--duration", "0", "--weights", str(checkpoints["plain"]))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --duration must be a whole number of seconds from 1 to 300, got 0."
    proc = _cli("--continuation", "--weights", str(checkpoints["plain"]))  # said with the flags the user has
    assert (proc.returncode, proc.stderr.strip()) == (2, "error: --continuation needs --input-audio: give the clip to "
                                                         "continue, or leave out --continuation.")


def test_missing_weights_give_one_clear_sentence(tmp_path):
    empty = tmp_path / "nothing-here"
    proc = _cli("--prompt", "x", env={"MUSICGEN_WEIGHTS": str(empty), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    msg = proc.stderr.strip().splitlines()[-1]
    assert msg == (f"error: No MusicGen checkpoint found in {empty} and HF_HUB_OFFLINE is set: run "
                   "`make weights MODEL=facebook/musicgen-melody` (python -m musicgen.hub facebook/musicgen-melody) "
                   "where the Hugging Face Hub is reachable, or set MUSICGEN_WEIGHTS to a local checkpoint directory.")


def test_setup_without_weights_fails_naming_the_folder_and_command(tmp_path, monkeypatch):
    from predict import Predictor

    monkeypatch.setenv("MUSICGEN_WEIGHTS", str(tmp_path / "missing"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match=r"No MusicGen checkpoint found in .*missing.*make weights"):
        Predictor().setup()


# ---------------------------------------------------------------- settings
def test_settings_are_read_once_from_the_environment():
    from musicgen.settings import Settings

    env = {"MUSICGEN_MODEL": "facebook/musicgen-stereo-small", "MUSICGEN_DEVICE": "CPU",
           "MUSICGEN_PRECISION": "fp32", "MUSICGEN_COMPILE": "yes", "HF_HUB_OFFLINE": "1"}
    settings = Settings.from_env(env)
    assert (settings.model, settings.device, settings.precision, settings.compile, settings.offline) == (
        "facebook/musicgen-stereo-small", "cpu", "fp32", True, True)
    assert settings.weights_dir == ROOT / "weights" / "musicgen-stereo-small"
    assert Settings.from_env({}).weights_dir == ROOT / "weights" / "musicgen-melody"
    assert Settings.from_env({"MUSICGEN_WEIGHTS": "/srv/ckpt"}).weights_dir == Path("/srv/ckpt")
    assert Settings.from_env(env, precision="int8", device=None).precision == "int8"  # overrides; None keeps


def test_metrics_listen_on_loopback_unless_told_and_make_serve_takes_the_images_concurrency():
    import torch

    from musicgen.settings import Settings
    from musicgen_dev.serve import image_concurrency, server_env

    assert Settings.from_env({}).metrics_host == "127.0.0.1"
    assert Settings.from_env({"MUSICGEN_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    cpu = torch.device("cpu")
    # the image: the model's slots follow COG_MAX_CONCURRENCY; `auto` keeps the device's own
    assert Settings.from_env({"COG_MAX_CONCURRENCY": "8"}).slots(cpu) == 8
    assert Settings.from_env({"COG_MAX_CONCURRENCY": "8", "MUSICGEN_CONCURRENCY": "auto"}).slots(cpu) == 2
    assert Settings.from_env({"COG_MAX_CONCURRENCY": "8", "MUSICGEN_CONCURRENCY": "3"}).slots(cpu) == 3
    env = server_env({"PATH": "/usr/bin"})
    assert image_concurrency() == 8 and env["COG_MAX_CONCURRENCY"] == "8" and env["MUSICGEN_CONCURRENCY"] == "auto"
    assert env["LOG_FORMAT"] == "console" and server_env({"LOG_FORMAT": "json"})["LOG_FORMAT"] == "json"
    assert server_env({"COG_MAX_CONCURRENCY": "2"})["COG_MAX_CONCURRENCY"] == "2"


def test_compiling_takes_the_fixed_shape_step_and_never_the_segments_one():
    import torch

    from musicgen.settings import Settings

    cpu = torch.device("cpu")
    assert not Settings().fixed_step(cpu) and Settings(compile=True).fixed_step(cpu)
    assert Settings.from_env({"MUSICGEN_COMPILE": "1"}).fixed_step(cpu)
    assert not Settings(step="segments", compile=False).fixed_step(cpu)
    with pytest.raises(MusicGenError, match="MUSICGEN_COMPILE=1 needs the fixed-shape step, but MUSICGEN_STEP=segments"):
        Settings.from_env({"MUSICGEN_STEP": "segments", "MUSICGEN_COMPILE": "1"})


def test_precision_and_device_settings_are_checked():
    import torch

    from musicgen.settings import Settings, default_precision

    cpu = torch.device("cpu")
    assert Settings(precision="auto").decode_precision(cpu) == default_precision(cpu) == "int8"
    assert Settings(precision="int4").decode_precision(cpu) == "int4"
    with pytest.raises(MusicGenError) as err:
        Settings.from_env({"MUSICGEN_PRECISION": "fp8"})
    assert str(err.value) == "MUSICGEN_PRECISION must be one of auto, fp32, bf16, fp16, int8, int4, got 'fp8'."
    with pytest.raises(MusicGenError) as err:
        Settings(precision="int8").decode_precision(torch.device("cuda"))
    assert str(err.value) == "MUSICGEN_PRECISION=int8 is a CPU option; use auto, bf16 or fp16 on a GPU."
    with pytest.raises(MusicGenError) as err:
        Settings.from_env({"MUSICGEN_DEVICE": "tpu"})
    assert str(err.value) == "MUSICGEN_DEVICE must be one of auto, cpu, cuda, got 'tpu'."


def test_a_gpu_without_native_bf16_decodes_in_fp16(monkeypatch):
    import torch

    from musicgen.settings import default_precision

    # T4/V100: bf16 only emulated; is_bf16_supported() says True unless emulation is excluded
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert default_precision(torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert default_precision(torch.device("cuda")) == "bf16"


# ---------------------------------------------------------------- the Cog schema
def test_committed_openapi_schema_is_in_sync_with_predict_py():
    from musicgen_dev.cog_schema import SCHEMA_PATH, build_schema, render

    assert SCHEMA_PATH.is_file(), "run `python -m musicgen_dev.cog_schema`"
    assert SCHEMA_PATH.read_text() == render(build_schema()), "run `python -m musicgen_dev.cog_schema`"


def test_openapi_schema_describes_every_input():
    from musicgen_dev.cog_schema import SCHEMA_PATH

    schemas = json.loads(SCHEMA_PATH.read_text())["components"]["schemas"]
    props = schemas["Input"]["properties"]
    assert list(props) == list(CONTRACT)
    assert "required" not in schemas["Input"]  # every input has a default
    json_types = {"STRING": "string", "PATH": "string", "INTEGER": "integer", "BOOL": "boolean", "FLOAT": "number"}
    for name, (primitive, optional, default, ge, le, choices) in CONTRACT.items():
        prop = props[name]
        assert prop["x-order"] == list(CONTRACT).index(name)
        assert prop["default"] == default and prop.get("nullable", False) == optional, name
        # an optional input is its type or null, said as JSON Schema says it (coglet ignores `nullable`)
        value = prop["anyOf"][0] if optional else prop
        if optional:
            assert prop["anyOf"][1] == {"enum": [None], "nullable": True} and "type" not in prop, name
        assert value.get("minimum") == ge and value.get("maximum") == le, name
        if choices:
            enum = schemas[value["allOf"][0]["$ref"].rsplit("/", 1)[1]]
            assert enum["enum"] == choices and enum["type"] == "string"
        else:
            assert value["type"] == json_types[primitive], name
    assert props["input_audio"]["anyOf"][0]["format"] == "uri"
    # still an array of URIs; coglet streams it (SSE, output webhooks) as its items are yielded
    assert schemas["Output"] == {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"},
                                 "x-cog-array-type": "iterator"}
    assert json.loads(SCHEMA_PATH.read_text())["paths"]["/predictions"]["post"]["x-cog-streaming"] is True


def test_openapi_input_schema_accepts_null_and_integral_numbers_as_json_schema():
    """What coglet does with the Input schema: compile it as plain JSON Schema (draft 2020-12)."""
    import jsonschema

    from musicgen_dev.cog_schema import SCHEMA_PATH

    schemas = json.loads(SCHEMA_PATH.read_text())["components"]["schemas"]
    text = json.dumps(schemas["Input"])  # with its $refs inlined, as coglet inlines them
    for name, schema in schemas.items():
        text = text.replace(json.dumps({"$ref": f"#/components/schemas/{name}"}), json.dumps(schema))
    validator = jsonschema.Draft202012Validator(json.loads(text))
    good = {"prompt": None, "input_audio": None, "continuation_end": None, "seed": None, "duration": 2.0,
            "normalization_strategy": "peak"}
    assert list(validator.iter_errors(good)) == []
    for bad in ({"duration": 2.5}, {"duration": None}, {"seed": -2}, {"seed": "1"}, {"top_p": 1.5},
                {"normalization_strategy": "loud"}, {"input_audio": 5}):
        assert list(validator.iter_errors(bad)), bad
    # a misspelt input is refused by the schema, naming it (Cog's server strips it first: tests/test_http.py)
    assert ["'durration' was unexpected" in e.message for e in validator.iter_errors({"durration": 2})] == [True]


# ---------------------------------------------------------------- the package's layers
def _imports(path: Path) -> set[str]:
    """The musicgen modules a source file imports (``from musicgen.x import y``: musicgen.x.y when that is a
    module, else musicgen.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "musicgen"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "musicgen":
            assert node.level == 0, f"{path}: a relative import"
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                as_path = ROOT / Path(*name.split("."))
                found.add(name if as_path.with_suffix(".py").is_file() or as_path.is_dir() else node.module)
    return found


def test_the_packages_import_only_downward():
    """musicgen.audio < musicgen.engine < musicgen.serving; the contract and configuration modules on top
    (errors, inputs, request, settings, hub, manifest, convert) sit over audio and engine but under serving;
    nothing but the entry points imports the command (cli, __main__) or the package's lazy root."""
    below = {"musicgen.audio": {"musicgen.engine", "musicgen.serving"}, "musicgen.engine": {"musicgen.serving"}}
    entry = {"musicgen", "musicgen.cli", "musicgen.__main__"}
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in (ROOT / "musicgen").rglob("*.py")}
    assert {"musicgen.audio.audio_io", "musicgen.engine.graphs", "musicgen.serving.scheduler"} <= set(modules)
    offenders = []
    for name, path in modules.items():
        if name in entry or name.endswith(".__init__") and name.count(".") == 1:
            continue
        package = ".".join(name.split(".")[:2]) if name.count(".") > 1 else None
        forbidden = below.get(package, set()) if package else {"musicgen.serving"}
        for target in _imports(path):
            if target in entry or any(target == f or target.startswith(f + ".") for f in forbidden):
                offenders.append(f"{name} -> {target}")
    assert offenders == []


# ---------------------------------------------------------------- benches
def test_benches_show_their_whole_description_and_the_soak_cleans_up_after_a_short_run(tmp_path):
    """A bench's --help is its whole docstring (it was cut mid-sentence); a soak shorter than its warm-up names
    the predictions it measured; and a bench leaves no scratch directory behind (musicgen_dev.bench)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for bench, last_line in (("soak", "bench/soak.py [--count 200]"), ("throughput", "[--clients 1 2 4 8] [--http]")):
        done = subprocess.run([sys.executable, f"bench/{bench}.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and last_line in done.stdout, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "bench/soak.py", "--count", "4"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "rss_growth_last_3_pct=" in done.stdout and "files_left=0" in done.stdout, done.stdout + done.stderr
    assert done.returncode in (0, 1)  # 4 predictions are too few for the 5 % growth gate to mean anything
    assert not list(tmp_path.glob("soak-*"))
