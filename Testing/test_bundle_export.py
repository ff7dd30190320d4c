"""``export_bundle`` writes MONAI bundles that MONAI itself builds, loads and runs.

The checks are those a user of the bundle makes: MONAI's own ``ConfigParser`` builds
``network_def`` from ``configs/inference.json``; ``models/model.pt`` loads with
``weights_only=True`` and ``strict=True`` and reproduces the network's outputs; the metadata has
the MONAI schema's fields, the label names as ``channel_def`` and MedSegNAS' labels, colors and
preprocessing spec; ``python -m monai.bundle run`` writes a label map on the input's grid; the
bundle opens as an untrusted bundle through the safety layer. Refusals leave nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import segment_fixtures as sf
import torch
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.data.preprocessing import PreprocessingSpec
from MedSegNASLib.data.volume import LabelInfo
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.models import check_config, inspect_bundle, load_config_file, load_weights
from MedSegNASLib.models.export import dints_network_def, export_bundle
from MedSegNASLib.models.registry import SEGMENT_CONFIG_IDS
from monai.bundle import ConfigParser

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: Top-level metadata fields of MONAI's bundle metadata schema (meta_schema_20240725) that
#: ``monai.bundle verify_metadata`` requires (checking against the schema itself needs a download).
SCHEMA_FIELDS = (
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
TENSOR_FIELDS = (
    "type",
    "format",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
)


def _random_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = sf.build(sf.UNET_DEF).eval()
    for module in network.modules():  # non-trivial running statistics, so a wrong load would show
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return network


def _export(folder: Path, network: torch.nn.Module | None = None, **kwargs) -> Path:
    network = network if network is not None else _random_unet()
    options = {
        "network_def": sf.UNET_DEF,
        "state_dict": network.state_dict(),
        "labels": PHANTOM_LABELS,
        "preprocessing": sf.TINY_SPEC,
        "name": "tiny phantom UNet",
        "authors": ["A. Author", "B. Author"],
        "extra_metadata": {"metrics": {"val_dice": 0.8}, "run_id": "train-1"},
    }
    options.update(kwargs)
    return export_bundle(folder, **options)


def test_monai_builds_the_network_and_the_weights_load_strictly_and_weights_only(tmp_path: Path) -> None:
    network = _random_unet()
    bundle = _export(tmp_path / "bundle", network)
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "configs/inference.json",
        "configs/metadata.json",
        "docs/README.md",
        "models/model.pt",
    ]
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    rebuilt = ConfigParser(config).get_parsed_content("network_def")  # MONAI's own parser
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), network(x))
    # The preprocessing and inferer follow the spec; every component is MONAI's.
    transforms = config["preprocessing"]["transforms"]
    assert [t["_target_"] for t in transforms][:3] == ["LoadImaged", "EnsureChannelFirstd", "Orientationd"]
    spacing = next(t for t in transforms if t["_target_"] == "Spacingd")
    assert spacing["pixdim"] == sf.TINY_SPEC.spacing
    assert config["inferer"]["roi_size"] == sf.TINY_SPEC.patch_size


def test_metadata_has_monai_fields_label_names_colors_and_the_spec(tmp_path: Path) -> None:
    bundle = _export(tmp_path / "bundle")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    for key in SCHEMA_FIELDS:
        assert metadata.get(key) not in (None, ""), key
    fmt = metadata["network_data_format"]
    for tensor in (fmt["inputs"]["image"], fmt["outputs"]["pred"]):
        for key in TENSOR_FIELDS:
            assert key in tensor, key
    assert fmt["inputs"]["image"]["num_channels"] == 1 and fmt["inputs"]["image"]["modality"] == "CT"
    assert fmt["outputs"]["pred"]["channel_def"] == {str(lb.value): lb.name for lb in PHANTOM_LABELS}
    assert metadata["authors"] == "A. Author, B. Author"
    assert metadata["eval_metrics"] == {"val_dice": 0.8}
    section = metadata["medsegnas"]
    assert [(lb["value"], lb["name"]) for lb in section["labels"]] == [
        (lb.value, lb.name) for lb in PHANTOM_LABELS
    ]
    np.testing.assert_allclose([lb["color"] for lb in section["labels"]], [lb.color for lb in PHANTOM_LABELS])
    assert PreprocessingSpec.from_dict(section["preprocessing"]) == sf.TINY_SPEC
    assert section["run_id"] == "train-1"
    readme = (bundle / "docs" / "README.md").read_text()
    assert "liver" in readme and "monai.bundle run" in readme and "medsegnas segment" in readme


def test_bundle_opens_untrusted_through_the_safety_layer(tmp_path: Path) -> None:
    bundle = _export(tmp_path / "bundle")
    config = load_config_file(bundle / "configs" / "inference.json")
    # everything segment builds is on the allow-lists; MONAI's own workflow items are not built
    assert check_config(config, ids=list(SEGMENT_CONFIG_IDS), bundle_root=bundle) == []
    info = inspect_bundle(bundle)
    assert info.label_names == {lb.value: lb.name for lb in PHANTOM_LABELS}
    assert info.in_channels == 1 and info.out_channels == 5
    assert set(load_weights(info.weights)) == set(_random_unet().state_dict())


def test_dints_bundle_holds_its_arch_code_as_json_and_builds_in_monai(tmp_path: Path) -> None:
    code = sf.tiny_arch_code()
    network_def = dints_network_def(code, in_channels=1, num_classes=5, channel_mul=0.25)
    network = sf.build(network_def).eval()
    bundle = export_bundle(
        tmp_path / "dints",
        network_def=network_def,
        state_dict=network.state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=sf.TINY_SPEC,
        name="tiny DiNTS",
        arch_code=code,
    )
    arch = json.loads((bundle / "configs" / "arch.json").read_text())
    assert arch["arch_code_a"] == code.arch_code_a.tolist() and arch["node_a"] == code.node_a.tolist()
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["medsegnas"]["arch_code"]["arch_code_c"] == code.arch_code_c.tolist()
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    rebuilt = ConfigParser(config).get_parsed_content("network_def")
    rebuilt.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True), strict=True)
    rebuilt.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), network(x))
    assert check_config(config, ids=[i for i in SEGMENT_CONFIG_IDS if i in config], bundle_root=bundle) == []


def test_monai_bundle_run_writes_a_label_map_on_the_input_grid(tmp_path: Path) -> None:
    pytest.importorskip("ignite", reason="MONAI's bundle workflow needs pytorch-ignite")
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire")
    bundle = _export(tmp_path / "bundle")
    images = sf.write_test_images(tmp_path / "images")
    run = sf.monai_bundle_run(bundle, images["oblique"].parent, tmp_path / "out")
    assert run.returncode == 0, run.stderr[-3000:]
    for view in ("oblique", "lps", "ras_permuted"):
        labels, affine = sf.read_labels(tmp_path / "out" / f"{view}_seg.nii.gz")
        _, image_affine = sf.read_labels(images[view])
        image = sf.read_labels(images[view])[0]
        assert labels.shape == image.shape and labels.dtype == np.uint8
        np.testing.assert_allclose(affine, image_affine, atol=1e-4)
        assert set(np.unique(labels)) <= set(range(5))
    assert not (bundle / "eval").exists()  # MONAI wrote where it was told


def test_reexport_replaces_a_bundle_and_refusals_leave_nothing(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    _export(target, _random_unet(0), version="0.1.0")
    _export(target, _random_unet(1), version="0.2.0")
    assert json.loads((target / "configs" / "metadata.json").read_text())["version"] == "0.2.0"
    torch.testing.assert_close(
        torch.load(target / "models" / "model.pt", weights_only=True)["model.0.conv.unit0.conv.weight"],
        _random_unet(1).state_dict()["model.0.conv.unit0.conv.weight"],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging folder left

    user_folder = tmp_path / "notes"
    user_folder.mkdir()
    (user_folder / "keep.txt").write_text("mine")
    with pytest.raises(MedSegNASError, match="not a bundle folder"):
        _export(user_folder)
    assert [p.name for p in user_folder.iterdir()] == ["keep.txt"]

    wrong = dict(sf.UNET_DEF, channels=[4, 8, 16])
    with pytest.raises(MedSegNASError, match="does not fit network_def"):
        _export(tmp_path / "wrong", network_def=wrong)
    with pytest.raises(MedSegNASError, match=r"output channels 0\.\.2 .*got values \[0, 1, 7\]"):
        _export(tmp_path / "gap", labels=[*PHANTOM_LABELS[:2], LabelInfo(7, "x", (1.0, 0.0, 0.0))])
    with pytest.raises(MedSegNASError, match="4 labels"):
        _export(tmp_path / "count", labels=PHANTOM_LABELS[:4])
    unsafe = dict(sf.UNET_DEF, channels="$__import__('os').getcwd() and [8, 16, 32]")
    with pytest.raises(MedSegNASError, match="safe bundle"):
        _export(tmp_path / "unsafe", network_def=unsafe)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "notes"]
