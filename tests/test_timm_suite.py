"""timm's own ``tests/test_models.py``, from the sdist of the installed timm, passes on our variants.

The file is not copied into this repository: it is taken from ``pip download timm==<installed> --no-binary
:all:`` the first time and kept in ``~/.cache/spikformer/timm-tests/<version>/`` (``SPIKFORMER_TIMM_TESTS``
names another copy of the file). timm's file picks its models with ``timm.list_models``;
``tests/timm_suite_plugin.py`` restricts that to our names and says where timm's own filters place them (the
non-standard transformers; TorchScript excluded). The default run takes one variant of each input family, in
under a minute on two cores; the ``slow`` run (``.ci/run``) takes every variant.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

from spikformer.models import list_models

TESTS = Path(__file__).resolve().parent
# One variant of each input family (static images through the SPS; event frames, with the Q/K max-pool).
DEFAULT_VARIANTS = ["spikformer_cifar_4_256", "spikformer_dvs_2_256_qkpool"]


def timm_test_file() -> Path:
    """``tests/test_models.py`` of the installed timm's sdist, fetched once and cached."""
    if os.environ.get("SPIKFORMER_TIMM_TESTS"):
        return Path(os.environ["SPIKFORMER_TIMM_TESTS"])
    cached = Path.home() / ".cache" / "spikformer" / "timm-tests" / timm.__version__ / "test_models.py"
    if cached.exists():
        return cached
    with tempfile.TemporaryDirectory() as folder:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", f"timm=={timm.__version__}",
                                  "--no-binary", ":all:", "--no-deps", "-q", "-d", folder],
                                 capture_output=True, text=True, timeout=600)
        archives = list(Path(folder).glob("timm-*.tar.gz"))
        if fetched.returncode or not archives:
            pytest.skip(f"timm {timm.__version__}'s sdist could not be downloaded ({fetched.stderr.strip()[-200:]}); "
                        f"set SPIKFORMER_TIMM_TESTS to a copy of its tests/test_models.py")
        with tarfile.open(archives[0]) as archive:
            member = archive.getmember(f"timm-{timm.__version__}/tests/test_models.py")
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(archive.extractfile(member).read())
    return cached


def run_timm_suite(variants: list[str], tmp_path: Path) -> dict[str, dict[str, str]]:
    """Run timm's test file on ``variants``; returns {test: {variant: outcome}}."""
    source = timm_test_file()
    suite = tmp_path / "timm_tests"
    suite.mkdir()
    (suite / "test_models.py").write_bytes(source.read_bytes())
    report = tmp_path / "report.xml"
    # TIMEOUT: timm's per-test limit (120 s for a forward pass by default), too short for a full-size ImageNet
    # variant on two shared cores.
    env = {"TIMEOUT": "1200", **os.environ, "SPIKFORMER_TIMM_SUITE_MODELS": ",".join(variants),
           "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "timm_suite_plugin", "-p", "no:cacheprovider",
                           "-q", "-W", "ignore", "--tb=short", f"--junitxml={report}", "--rootdir", str(suite),
                           "-c", os.devnull, str(suite / "test_models.py")],
                          cwd=suite, env=env, capture_output=True, text=True, timeout=3000)
    outcomes: dict[str, dict[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test, _, params = case.get("name").partition("[")
        variant = max((v for v in variants if v in params), key=len)  # dvs_2_256 is a prefix of dvs_2_256_qkpool
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes.setdefault(test, {})[variant] = kinds[0] if kinds else "passed"
    assert done.returncode == 0, done.stdout[-4000:]
    return outcomes


def check_every_variant_passes(outcomes: dict[str, dict[str, str]], variants: list[str]) -> None:
    assert {"test_model_forward", "test_model_backward", "test_model_default_cfgs_non_std",
            "test_model_forward_fx", "test_model_backward_fx"} <= outcomes.keys()
    for test, results in outcomes.items():
        assert results == dict.fromkeys(variants, "passed"), test
    assert not any("torchscript" in test for test in outcomes)  # excluded as timm excludes its own models


def test_timms_own_model_tests_pass_on_one_variant_of_each_input_family(tmp_path):
    check_every_variant_passes(run_timm_suite(DEFAULT_VARIANTS, tmp_path), DEFAULT_VARIANTS)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_timms_own_model_tests_pass_on_every_variant(tmp_path):
    check_every_variant_passes(run_timm_suite(list_models(), tmp_path), list_models())
