from __future__ import annotations

from pathlib import Path

import yaml

from kubemaas_operator.api_docs import render_reference
from kubemaas_operator.crd import CRDS, render

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crds_are_generated_from_the_code() -> None:
    for folder in ("manifests/base/crds", "charts/kubemaas/crds"):
        for name in CRDS:
            committed = (ROOT / folder / name).read_text()
            assert committed == render(name), (
                f"{folder}/{name} is stale: run `python -m kubemaas_operator.crd`"
            )


def test_the_api_reference_is_generated_from_the_crds() -> None:
    committed = (ROOT / "docs" / "api-reference.md").read_text()
    assert committed == render_reference(), (
        "docs/api-reference.md is stale: run `python -m kubemaas_operator.crd`"
    )


def test_the_api_reference_documents_every_spec_field_and_rule() -> None:
    reference = render_reference()
    for name in CRDS:
        crd = yaml.safe_load(render(name))
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for field in spec["properties"]:
            assert f"`spec.{field}`" in reference, (
                f"{crd['spec']['names']['kind']}.spec.{field} is undocumented"
            )
        for rule in spec.get("x-kubernetes-validations", []):
            assert rule["message"] in reference
    # A rule nested in a field comes with the message the API server answers with.
    assert "model.uri must not contain '..' path segments" in reference


def test_model_service_crd_has_status_subresource_short_name_and_printer_columns() -> None:
    crd = yaml.safe_load(render("modelservice.yaml"))
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["ms"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Ready", "Replicas", "Model", "GPUs", "Endpoint", "Age"]
