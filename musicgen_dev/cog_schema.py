"""``.cog/openapi_schema.json`` from predict.py, through Cog's own introspection (a development tool).

Cog's HTTP server (coglet) validates request inputs only against this file, which ``cog build`` normally
writes. Without Docker we write it ourselves, from the PredictorInfo that ``cog._inspector`` extracts, in the
layout of Cog's OpenAPI 3.0.2 generator, with one difference: coglet compiles the Input schema as plain JSON
Schema, where OpenAPI's ``nullable`` means nothing, so an explicit ``null`` for an optional input would be
refused with 422. Each optional input therefore also says it as JSON Schema does (``anyOf`` its type or
``null``), which OpenAPI 3.0 readers accept too; ``cog build --openapi-schema .cog/openapi_schema.json`` puts
this file in the image. ``python -m musicgen_dev.cog_schema`` rewrites the file; ``--check`` exits 1 when the
committed file differs from predict.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / ".cog" / "openapi_schema.json"

_OK = {"description": "Successful Response", "content": {"application/json": {"schema": {}}}}
_INVALID = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


# keywords that constrain a value (they move into the non-null branch of an optional input)
_VALUE_KEYWORDS = ("type", "format", "allOf", "minimum", "maximum", "minLength", "maxLength", "pattern")


def _title(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split("_"))


def _input_schema(info) -> tuple[dict, dict]:
    properties, required, enums = {}, [], {}
    for field in sorted(info.inputs.values(), key=lambda f: f.order):
        prop: dict = {"x-order": field.order}
        if field.choices:
            enums[field.name] = {
                "title": field.name, "description": "An enumeration.", "enum": list(field.choices),
                "type": field.type.primitive.json_type().get("type", "string"),
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{field.name}"}]
        else:
            prop["title"] = _title(field.name)
            prop.update(field.type.json_type())
        nullable = field.type.repetition.name in ("OPTIONAL", "OPTIONAL_REPEATED")
        has_default = field.default is not None or nullable
        if not has_default:
            required.append(field.name)
        else:
            prop["default"] = field.default
        if nullable:
            prop["nullable"] = True
        if field.description:
            prop["description"] = field.description
        for key, attr in (("minimum", "ge"), ("maximum", "le"), ("minLength", "min_length"),
                          ("maxLength", "max_length"), ("pattern", "regex")):
            value = getattr(field, attr)
            if value is not None:
                integer = field.type.json_type().get("type") == "integer"
                prop[key] = int(value) if integer and key in ("minimum", "maximum") else value
        if nullable:  # the value's own schema, or null ("not given")
            typed = {key: prop.pop(key) for key in list(prop) if key in _VALUE_KEYWORDS}
            prop["anyOf"] = [typed, {"enum": [None], "nullable": True}]
        properties[field.name] = prop
    # an input the predictor does not have (a misspelt name) is refused with 422 naming it, not ignored
    schema = {"title": "Input", "type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema, enums


def _streams(module: str, predictor: str) -> bool:
    """Whether ``predictor.predict`` is marked ``@streaming`` (Cog's decorator changes nothing at run time:
    coglet reads the mark from this file, as ``"x-cog-streaming": true`` on ``POST /predictions``, and serves
    ``Accept: text/event-stream`` only then)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == predictor):
        for fn in (n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "predict"):
            names = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in fn.decorator_list}
            return "streaming" in names
    return False


def build_schema(module: str = "predict", predictor: str = "Predictor") -> dict:
    """The OpenAPI document for ``module:predictor``."""
    from cog import _inspector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = _inspector.create_predictor(module, predictor)
    inputs, enums = _input_schema(info)
    output = dict(info.output.json_type())
    output["title"] = "Output"
    ref = "#/components/schemas/"
    components = {
        "Input": inputs,
        "Output": output,
        **enums,
        "PredictionRequest": {
            "title": "PredictionRequest", "type": "object",
            "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": ref + "Input"}},
        },
        "PredictionResponse": {
            "title": "PredictionResponse", "type": "object",
            "properties": {
                "input": {"$ref": ref + "Input"}, "output": {"$ref": ref + "Output"},
                **{k: {"title": _title(k), "type": "string"} for k in ("id", "version")},
                **{k: {"title": _title(k), "type": "string", "format": "date-time"}
                   for k in ("created_at", "started_at", "completed_at")},
                **{k: {"title": _title(k), "type": "string"} for k in ("status", "error", "logs")},
                "metrics": {"title": "Metrics", "type": "object"},
            },
        },
        "Status": {"title": "Status", "description": "An enumeration.", "type": "string",
                   "enum": ["starting", "processing", "succeeded", "canceled", "failed"]},
        "HTTPValidationError": {
            "title": "HTTPValidationError", "type": "object",
            "properties": {"detail": {"title": "Detail", "type": "array", "items": {"$ref": ref + "ValidationError"}}},
        },
        "ValidationError": {
            "title": "ValidationError", "type": "object", "required": ["loc", "msg", "type"],
            "properties": {
                "loc": {"title": "Location", "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                "msg": {"title": "Message", "type": "string"},
                "type": {"title": "Error Type", "type": "string"},
            },
        },
    }
    paths = {
        "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _OK}}},
        "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck_health_check_get",
                                  "responses": {"200": _OK}}},
        "/predictions": {"post": {
            "summary": "Predict", "description": "Run a single prediction on the model",
            "operationId": "predict_predictions_post",
            "requestBody": {"content": {"application/json": {"schema": {"$ref": ref + "PredictionRequest"}}}},
            "responses": {
                "200": {"description": "Successful Response",
                        "content": {"application/json": {"schema": {"$ref": ref + "PredictionResponse"}}}},
                "422": _INVALID,
            },
            **({"x-cog-streaming": True} if _streams(module, predictor) else {}),
        }},
        "/predictions/{prediction_id}/cancel": {"post": {
            "summary": "Cancel", "operationId": "cancel_predictions__prediction_id__cancel_post",
            "parameters": [{"required": True, "schema": {"title": "Prediction Id", "type": "string"},
                            "name": "prediction_id", "in": "path"}],
            "responses": {"200": _OK, "422": _INVALID},
        }},
    }
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": paths,
            "components": {"schemas": components}}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicgen_dev.cog_schema", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed file")
    args = parser.parse_args(argv)
    text = render(build_schema())
    if args.check:
        current = SCHEMA_PATH.read_text() if SCHEMA_PATH.is_file() else ""
        if current != text:
            print(f"{SCHEMA_PATH.relative_to(ROOT)} is out of date: run `python -m musicgen_dev.cog_schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.parent.mkdir(exist_ok=True)
    SCHEMA_PATH.write_text(text)
    print(SCHEMA_PATH.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
