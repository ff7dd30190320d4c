"""Published MONAI model-zoo bundles: ``medsegnas segment --device cpu`` against MONAI's own run.

The published inference configs of ``Testing/data/model_zoo`` (no weights, no bundle code) run
with random weights (:mod:`zoo_fixtures`): on oblique test images of about the bundle's voxel
size, ``python -m monai.bundle run`` and ``medsegnas segment --device cpu`` must give the same
label on at least 99% of the voxels. Bundles whose config imports bundle code run under
``--trust`` with small stand-ins written for the tests. The catalog's run status must be what the
check (:func:`~MedSegNASLib.inference.model.run_status`) finds on the published configs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_fixtures as zf
from MedSegNASLib.inference.model import RUNS_UNTRUSTED, RUNS_WITH_TRUST, load_model, run_status

pytest.importorskip("ignite", reason="MONAI's bundle workflow needs pytorch-ignite")
pytest.importorskip("fire", reason="python -m monai.bundle needs fire")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CATALOG = Path(__file__).resolve().parents[1] / "MedSegNAS" / "MedSegNASLib" / "models" / "catalog.json"
#: The issue's ten bundles; these two need their own code (a network, a pair of transforms).
NEEDS_CODE = {"wholeBrainSeg_Large_UNEST_segmentation", "renalStructures_CECT_segmentation"}


def test_catalog_records_what_the_check_finds_on_the_published_configs() -> None:
    catalog = json.loads(CATALOG.read_text())["models"]
    for folder in sorted(p for p in zf.ZOO.iterdir() if p.is_dir()):
        status, reason = run_status(folder)
        if folder.name in zf.CASES:
            assert status in (RUNS_UNTRUSTED, RUNS_WITH_TRUST), (folder.name, reason)
        if folder.name in NEEDS_CODE:
            assert status == RUNS_WITH_TRUST and "scripts" in reason, (folder.name, reason)
        if folder.name in catalog:
            entry = catalog[folder.name]
            assert (entry.get("runs"), entry.get("runs_reason")) == (status, reason), (
                f"{folder.name}: catalog.json is stale; run benchmarks/model_zoo_table.py --status-only "
                "--update-catalog"
            )
    assert set(zf.CASES) <= set(catalog)  # every bundle of the issue is in the catalog


def test_bundles_that_need_code_are_refused_untrusted_with_one_line(tmp_path, capsys) -> None:
    name = "wholeBrainSeg_Large_UNEST_segmentation"
    bundle = zf.prepare_bundle(name, tmp_path)
    images = zf.write_images(name, tmp_path / "images")
    assert zf.ours(name, bundle, images, tmp_path / "out.nii.gz") == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "scripts.networks.unest_base_patch_4.UNesT" in error
    assert "--trust" in error and "internal error" not in error
    assert not (tmp_path / "out.nii.gz").exists()


def test_errors_from_bundle_code_are_labelled_as_the_bundles(tmp_path, capsys) -> None:
    name = "wholeBrainSeg_Large_UNEST_segmentation"
    bundle = zf.prepare_bundle(name, tmp_path)
    network = bundle / "scripts" / "networks" / "unest_base_patch_4.py"
    broken = "features = self.encode(x)[:, :, None]"  # a 6-D tensor into the next layer
    network.write_text(network.read_text().replace("features = self.encode(x)", broken))
    images = zf.write_images(name, tmp_path / "images")
    assert zf.ours(name, bundle, images, tmp_path / "out.nii.gz", trust=True) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "its own network code failed" in error and "internal error" not in error, error


def test_weights_file_is_the_one_the_config_names(tmp_path) -> None:
    """pediatric's CheckpointLoader reads models/dynunet_FT.pt (listed in large_files.yaml)."""
    bundle = tmp_path / "pediatric"
    shutil.copytree(zf.ZOO / "pediatric_abdominal_ct_segmentation", bundle)
    with pytest.raises(Exception, match=r"no weights file models/dynunet_FT\.pt .*large_files\.yaml"):
        load_model(bundle, trusted=True)


def test_brats_output_rule_is_read_as_data_not_run() -> None:
    from MedSegNASLib.inference.model import WhereChainMerge, _where_chain

    text = zf.ZOO / "brats_mri_segmentation" / "configs" / "inference.json"
    func = json.loads(text.read_text())["postprocessing"]["transforms"][3]["func"]
    rules, default = _where_chain(func)
    assert rules == [(2, 0.0, 4), (0, 0.0, 1), (1, 0.0, 2)] and default == 0
    channels = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).reshape(3, 4, 1, 1) > 0
    assert WhereChainMerge(rules, default)(channels).flatten().tolist() == [4, 1, 2, 0]
    for other in ("$lambda x: x.cpu()", "$lambda x: torch.where(x[[0]] > 0, os.system('ls'), 0)"):
        assert _where_chain(other) is None


def test_channels_last_only_where_every_parameter_allows_it() -> None:
    from MedSegNASLib.inference.optimize import channels_last_safe, prepare_for_inference

    network = torch.nn.Conv3d(1, 2, 3)
    assert channels_last_safe(network)
    network.embedding = torch.nn.Parameter(torch.zeros(1, 2, 3, 4))  # as UNesT's position embeddings
    assert not channels_last_safe(network)
    prepare_for_inference(network, torch.device("cpu"))  # used to raise (rank-4 tensor, 3D layout)
    assert network.weight.is_contiguous()


def _agree(name: str, tmp_path: Path) -> float:
    status, reason = run_status(zf.ZOO / name)
    bundle = zf.prepare_bundle(name, tmp_path)
    images = zf.write_images(name, tmp_path / "images")
    process, theirs = zf.monai_run(name, bundle, images, tmp_path / "monai")
    assert process.returncode == 0 and theirs is not None, process.stderr[-3000:]
    out = tmp_path / "ours.nii.gz"
    assert zf.ours(name, bundle, images, out, trust=status != RUNS_UNTRUSTED) == 0
    ours, theirs_array = zf.read(out), zf.read(theirs)
    assert len(np.unique(theirs_array)) >= 2, name  # a map with labels, not one class
    share = zf.agreement(ours, theirs_array)
    print(f"{name}: agreement {share:.6f} ({status})")
    return share


#: Under a minute each on 2 cores; the others (bigger networks, 240 x 240 x 160 windows, a
#: 12-block DiNTS, CropForeground's whole-grid preprocessing) take 1-5 minutes each: slow.
FAST = ["spleen_ct_segmentation", "wholeBrainSeg_Large_UNEST_segmentation"]


@pytest.mark.parametrize("name", FAST)
def test_bundle_agrees_with_monai_bundle_run(name, tmp_path) -> None:
    assert _agree(name, tmp_path) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zf.CASES if n not in FAST])
def test_large_bundle_agrees_with_monai_bundle_run(name, tmp_path) -> None:
    assert _agree(name, tmp_path) >= 0.99
