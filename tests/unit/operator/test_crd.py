from __future__ import annotations

from pathlib import Path

import yaml

from kubemaas_operator.crd import CRDS, render

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crds_are_generated_from_the_code() -> None:
    for name in CRDS:
        committed = (ROOT / "manifests" / "crds" / name).read_text()
        assert committed == render(name), (
            f"manifests/crds/{name} is stale: run `python -m kubemaas_operator.crd`"
        )


def test_model_service_crd_has_status_subresource_short_name_and_printer_columns() -> None:
    crd = yaml.safe_load(render("modelservice.yaml"))
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["ms"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Ready", "Replicas", "Model", "GPUs", "Endpoint", "Age"]
