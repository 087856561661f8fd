#!/usr/bin/env python3
"""Validates PAS request Bundles with an implementation precert does not share.

Each FILE is parsed with the FHIR R4B models of Python's `fhir.resources`
(pydantic: element names, types, cardinality, no unknown elements), the
Bundle as a whole and every entry's resource with its own model. Then the
Da Vinci PAS request rules that the models cannot express are checked: a
`collection` Bundle with an identifier and a timestamp, the Claim first with
use `preauthorization`, and every reference in it resolving to an entry.

R4B rather than R4: fhir.resources 7+ ships R4B (and R5) models only; the
resources PAS uses (Claim, Coverage, Patient, ServiceRequest, DeviceRequest,
DocumentReference, Organization, Practitioner) did not change from R4 to R4B.

With --crd, each FILE is a Da Vinci CRD request (a CDS Hooks call): the
draft orders Bundle and every prefetched resource or Bundle are parsed with
their models, the hook and context checked, and every reference in them
(and context.userId / patientId) must name a resource the request carries.

Usage: fhir_validate.py [--crd] FILE...   Exit 0 if all are valid; 1 with
every problem on stderr otherwise.
"""

import json
import sys

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle


def references(value, path=""):
    """Yields (path, reference) for every Reference.reference inside value."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "reference" and isinstance(child, str):
                yield path, child
            else:
                yield from references(child, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from references(child, f"{path}[{i}]")


def problems(doc):
    found = []
    try:
        Bundle.model_validate(doc)
    except Exception as e:  # pydantic's ValidationError lists every problem
        found.append(f"Bundle: {e}")
    entries = doc.get("entry") or []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") or {}
        kind = resource.get("resourceType")
        try:
            get_fhir_model_class(kind).model_validate(resource)
        except Exception as e:
            found.append(f"entry[{i}] ({kind}): {e}")
    if doc.get("type") != "collection":
        found.append("Bundle.type: a PAS request Bundle is a collection")
    for key in ("identifier", "timestamp"):
        if not doc.get(key):
            found.append(f"Bundle.{key}: required by the PAS request Bundle profile")
    if not entries or entries[0].get("resource", {}).get("resourceType") != "Claim":
        found.append("Bundle.entry[0]: must be the Claim")
        return found
    claim = entries[0]["resource"]
    if claim.get("use") != "preauthorization":
        found.append("Claim.use: must be preauthorization")
    if not claim.get("item"):
        found.append("Claim.item: at least one item")
    urls = {e.get("fullUrl") for e in entries}
    typed = {f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}" for e in entries}
    for i, entry in enumerate(entries):
        for path, ref in references(entry.get("resource")):
            if ref not in urls and ref not in typed:
                found.append(f"entry[{i}].{path}: `{ref}` does not resolve within the Bundle")
    return found


def model_problems(where, resource):
    kind = (resource or {}).get("resourceType")
    try:
        get_fhir_model_class(kind).model_validate(resource)
    except Exception as e:
        return [f"{where} ({kind}): {e}"]
    return []


def crd_problems(doc):
    found = []
    if doc.get("hook") not in ("order-sign", "order-select"):
        found.append("hook: must be order-sign or order-select")
    if not doc.get("hookInstance"):
        found.append("hookInstance: required")
    context = doc.get("context") or {}
    orders = context.get("draftOrders") or {}
    found += model_problems("context.draftOrders", orders)
    resources = []
    for i, e in enumerate(orders.get("entry") or []):
        r = e.get("resource") or {}
        found += model_problems(f"context.draftOrders.entry[{i}]", r)
        if r.get("resourceType") not in ("ServiceRequest", "DeviceRequest", "MedicationRequest"):
            found.append(f"context.draftOrders.entry[{i}]: not an order")
        if r.get("status") != "draft":
            found.append(f"context.draftOrders.entry[{i}].status: a draft order is `draft`")
        resources.append(r)
    if not resources:
        found.append("context.draftOrders: no orders")
    for key, value in (doc.get("prefetch") or {}).items():
        found += model_problems(f"prefetch.{key}", value)
        if value.get("resourceType") == "Bundle":
            for i, e in enumerate(value.get("entry") or []):
                found += model_problems(f"prefetch.{key}.entry[{i}]", e.get("resource"))
                resources.append(e.get("resource") or {})
        else:
            resources.append(value)
    typed = {f"{r.get('resourceType')}/{r.get('id')}" for r in resources}
    for r in resources:
        for path, ref in references(r):
            if ref not in typed:
                found.append(f"{r.get('resourceType')}/{r.get('id')}.{path}: `{ref}` is not in the request")
    if context.get("userId") not in typed:
        found.append(f"context.userId: `{context.get('userId')}` is not in the request")
    if f"Patient/{context.get('patientId')}" not in typed:
        found.append(f"context.patientId: `{context.get('patientId')}` is not in the request")
    return found


def main(paths):
    check = problems
    if paths and paths[0] == "--crd":
        check, paths = crd_problems, paths[1:]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        found = check(doc)
        for p in found:
            print(f"{path}: {p}", file=sys.stderr)
        bad += bool(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
