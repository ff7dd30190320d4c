"""``medsegnas segment`` against ``python -m monai.bundle run`` for more kinds of bundles.

Untrained networks of the other model-zoo families (SegResNet, SwinUNETR: window-dependent
normalisation, so the windows must be MONAI's) and a two-channel z-score (MR-like) bundle. The
bundles are untrained, so their label maps are noise-like: instead of Dice per label, the share of
voxels with the same label is compared (float32 on the CPU runs the same computation as MONAI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import segment_fixtures as sf
from MedSegNASLib.cli import main as medsegnas_main
from MedSegNASLib.data.phantom import PHANTOM_LABELS

pytest.importorskip("ignite", reason="MONAI's bundle workflow needs pytorch-ignite")
pytest.importorskip("fire", reason="python -m monai.bundle needs fire")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def segment(*args: object) -> int:
    return medsegnas_main(["segment", *map(str, args)])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return sf.write_test_images(tmp_path_factory.mktemp("seg") / "images")


def test_two_channel_zscore_bundle_matches_monai_bundle_run(tmp_path) -> None:
    """An MR-like bundle: two input channels, z-score normalisation (statistics over the whole
    resampled image, so nothing is cropped before it), foreground found from the data."""
    from MedSegNASLib.data.io import write_volume
    from MedSegNASLib.data.phantom import generate_phantom_case
    from MedSegNASLib.data.preprocessing import PreprocessingSpec
    from MedSegNASLib.data.volume import Volume
    from MedSegNASLib.models.export import export_bundle

    spec = PreprocessingSpec(
        channels=["T2", "ADC"], spacing=[6.0, 5.0, 7.0], intensity={"kind": "zscore"}, patch_size=[32, 32, 32]
    )
    network_def = dict(sf.UNET_DEF, in_channels=2, out_channels=3)
    bundle = export_bundle(
        tmp_path / "bundle",
        network_def=network_def,
        state_dict=sf.build(network_def, seed=5).state_dict(),
        labels=PHANTOM_LABELS[:3],
        preprocessing=spec,
        name="two-channel MR-like",
        inferer=sf.INFERER,
    )
    image, _ = generate_phantom_case(31, 40)
    hu = image.array.astype(np.float32)
    mr = np.concatenate([np.clip(hu + 1000.0, 0, None) / 10.0, np.clip(300.0 - np.abs(hu - 50.0), 0, None)])
    data = tmp_path / "data"
    path = write_volume(Volume(mr, image.affine), data / "mr.nii.gz")  # 4D NIfTI, channels marked
    run = sf.monai_bundle_run(bundle, data, tmp_path / "monai")
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "ours.nii.gz"
    assert segment(path, "--model", bundle, "-o", out) == 0
    ours, affine = sf.read_labels(out)
    theirs, _ = sf.read_labels(tmp_path / "monai" / "mr_seg.nii.gz")
    assert ours.shape == theirs.shape == image.spatial_shape
    np.testing.assert_allclose(affine, image.affine, atol=1e-4)
    assert len(np.unique(theirs)) >= 2
    # MONAI's z-score of the non-zero voxels tells exact zeros (air) from 1e-12 interpolation
    # leaks, which differ between any two resampling codes: the air may differ, the body not.
    body = mr[0] > 5.0
    assert np.mean(ours[body] == theirs[body]) > 0.9995
    assert np.mean(ours == theirs) > 0.995


def test_segresnet_and_swinunetr_bundles_match_monai_bundle_run(images, tmp_path) -> None:
    """The other network families of the model zoo, untrained: the same windows and the same
    numbers as MONAI (group/instance/layer norms make each window's output depend on the window,
    so this also checks that the windows are MONAI's)."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from MedSegNASLib.models.export import export_bundle

    networks = {
        "segresnet": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 5,
                      "init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
        "swinunetr": {"_target_": "SwinUNETR", "spatial_dims": 3, "in_channels": 1, "out_channels": 5,
                      "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [3, 3, 3, 3]},
    }  # fmt: skip
    # SwinUNETR halves 5 times and instance-normalises its deepest 2^3 features: 64^3 windows.
    specs = {
        "segresnet": sf.TINY_SPEC,
        "swinunetr": dataclasses.replace(sf.TINY_SPEC, patch_size=[64, 64, 64]),
    }
    bundles = {
        name: export_bundle(
            tmp_path / name,
            network_def=network_def,
            state_dict=sf.build(network_def, seed=7).state_dict(),
            labels=PHANTOM_LABELS,
            preprocessing=specs[name],
            name=name,
            inferer=sf.INFERER,
        )
        for name, network_def in networks.items()
    }
    data = images["oblique"].parent
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(
            pool.map(
                lambda name: sf.monai_bundle_run(bundles[name], data, tmp_path / f"{name}_monai"), bundles
            )
        )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    for name, bundle in bundles.items():
        out = tmp_path / f"{name}.nii.gz"
        assert segment(images["oblique"], "--model", bundle, "-o", out) == 0
        ours, _ = sf.read_labels(out)
        theirs, _ = sf.read_labels(tmp_path / f"{name}_monai" / "oblique_seg.nii.gz")
        assert len(np.unique(theirs)) >= 2, name
        assert np.mean(ours == theirs) > 0.999, name
