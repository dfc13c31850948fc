"""The CPU Dockerfile agrees with scripts/install.sh and the chart (no docker here to build it)."""

import re

import yaml

from .chart import CHART, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_image_installs_with_scripts_install_sh():
    assert re.search(r"^RUN .*bash scripts/install\.sh", DOCKERFILE, re.M)
    assert "TANDEM_SKIP_SYSTEM_PACKAGES=1" in DOCKERFILE and "COPY scripts/" in DOCKERFILE


def test_the_image_runs_as_the_chart_user_and_exposes_the_chart_ports():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", DOCKERFILE, re.M)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.M).group(1).split()}
    assert exposed == {values["gateway"]["port"], *values["workerPorts"].values()}
    assert 'ENTRYPOINT ["tandem"]' in DOCKERFILE
