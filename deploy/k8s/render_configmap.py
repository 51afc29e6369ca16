"""Writes deploy/k8s/configmap.yaml from deploy/config.yaml (run after editing the configuration)."""
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
HEADER = "# deploy/config.yaml as a ConfigMap; regenerate with `python deploy/k8s/render_configmap.py`.\n"


def main() -> None:
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orchard-config"},
        "data": {"config.yaml": (DEPLOY / "config.yaml").read_text()},
    }
    (DEPLOY / "k8s" / "configmap.yaml").write_text(HEADER + yaml.safe_dump(config_map, sort_keys=False, width=200))


if __name__ == "__main__":
    main()
