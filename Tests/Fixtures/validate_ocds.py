#!/usr/bin/env python3
"""Validates OCDS 1.1.5 documents against the official schemas and closed codelists.

    validate_ocds.py <reference dir> <file.json>...

Each file is a release package (has "releases"), a record package (has "records") or a single release. Prints
one line per error ("<file>: <path>: <message>") and "<n> errors" last; exits 1 when there is any error, 2 when
jsonschema is missing. Run by OpenContractingTests on what the service produced.
"""
import csv
import json
import os
import sys

try:
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4
except ImportError as error:
    print(f"the Python package jsonschema is needed (pip install 'jsonschema>=4.18'): {error}")
    sys.exit(2)

reference, files = sys.argv[1], sys.argv[2:]


def load(name):
    with open(os.path.join(reference, name), encoding="utf-8") as handle:
        return json.load(handle)


schemas = {name: load(name) for name in ["release-schema.json", "release-package-schema.json",
                                         "record-package-schema.json", "versioned-release-validation-schema.json"]}
registry = Registry().with_resources((schema["id"], Resource(contents=schema, specification=DRAFT4)) for schema in schemas.values())
codelists = {}
for name in os.listdir(os.path.join(reference, "codelists")):
    with open(os.path.join(reference, "codelists", name), encoding="utf-8") as handle:
        codelists[name] = {row["Code"] for row in csv.DictReader(handle)}
release_schema = schemas["release-schema.json"]


def resolve(schema):
    while "$ref" in schema:
        schema = release_schema["definitions"][schema["$ref"].split("/")[-1]]
    return schema


def codelist_errors(schema, value, path):
    """Values of closed codelists (openCodelist: false) that are not codes of the list."""
    schema = resolve(schema)
    errors = []
    if "codelist" in schema and value is not None:
        values = value if isinstance(value, list) else [value]
        if not schema.get("openCodelist", False):
            errors += [f"{path}: {v!r} is not in the closed codelist {schema['codelist']}"
                       for v in values if v not in codelists[schema["codelist"]]]
        return errors
    if isinstance(value, dict):
        for key, item in value.items():
            if key in schema.get("properties", {}):
                errors += codelist_errors(schema["properties"][key], item, f"{path}/{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += codelist_errors(schema["items"], item, f"{path}/{index}")
    return errors


total = 0
for file in files:
    with open(file, encoding="utf-8") as handle:
        document = json.load(handle)
    if "records" in document:
        schema, releases = schemas["record-package-schema.json"], []
        for record in document["records"]:
            releases += record.get("releases", []) + ([record["compiledRelease"]] if "compiledRelease" in record else [])
    elif "releases" in document:
        schema, releases = schemas["release-package-schema.json"], document["releases"]
    else:
        schema, releases = release_schema, [document]
    validator = jsonschema.Draft4Validator(schema, registry=registry, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]
    for release in releases:
        errors += codelist_errors(release_schema, release, release.get("id", "?"))
    for error in errors:
        print(f"{os.path.basename(file)}: {error}")
    total += len(errors)
print(f"{total} errors")
sys.exit(1 if total else 0)
