"""Opening a MONAI bundle someone sent you must never run their code.

Each attack below uses a payload that would create a marker file; the tests check that it is
refused with a one-line message naming the culprit and ``--trust``, and that the marker never
appears. Positive controls show the same payload *does* run under MONAI's own ConfigParser or a
plain unpickler, so the tests would fail if the safety layer let it through. The allowed subset
is checked against the expressions of published model-zoo inference configs and compared with
MONAI's own ConfigParser on a small spleen-like config.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.models import (
    ModelFileError,
    SafeConfigParser,
    UnsafeArchiveError,
    UnsafeConfigError,
    UnsafeModelError,
    check_config,
    check_expression,
    check_target,
    evaluate_expression,
    find_bundle_root,
    inspect_bundle,
    load_arch_code,
    load_checkpoint,
    load_config_file,
    load_weights,
    safe_extract,
    safe_parse_bundle_config,
)
from monai.bundle import ConfigParser

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*nvImageCodec:UserWarning"),
    pytest.mark.filterwarnings("ignore:Preferably the reader:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

# ------------------------------------------------------------------------- published configs

#: Every ``$`` expression of the inference configs of spleen_ct_segmentation,
#: pancreas_ct_dints_segmentation, swin_unetr_btcv_segmentation, multi_organ_segmentation and
#: wholeBody_ct_segmentation (Project-MONAI/model-zoo, models/<name>/configs/inference.*) that the
#: inference path reaches, or that are harmless elsewhere.
PUBLISHED_EXPRESSIONS = [
    "$import glob",
    "$import numpy",
    "$import os",
    "$@bundle_root + '/eval'",
    "$numpy.float32",
    "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "$@network_def.to(@device)",
    "$[{'image': i} for i in @datalist]",
    "$@bundle_root + '/models/model.pt'",
    "$@bundle_root + '/models/search_code_18590.pt'",
    "$torch.load(@arch_ckpt_path, map_location=torch.device('cuda'))",
    "$@bundle_root + '/configs/dataset_0.json'",
    "$@arch_ckpt['arch_code_a']",
    "$@arch_ckpt['arch_code_c']",
    "$torch.device('cuda')",
    "$torch.from_numpy(@arch_ckpt['node_a'])",
    "$setattr(torch.backends.cudnn, 'benchmark', True)",
    "$@checkpoint",
    "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
    "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
    "$@bundle_root + '/models/' + @modelname",
    "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))",
]

#: Expressions of MONAI's own workflow (``initialize``, ``run``, datalists) that the engine never
#: evaluates: refused, since they call what the config built or read files by any path.
WORKFLOW_EXPRESSIONS = {
    "$monai.utils.set_determinism(seed=123)": "monai.utils.set_determinism",
    "$@checkpointloader(@evaluator) if @load_pretrain else None": "calls the component '@checkpointloader'",
    "$@evaluator.run()": "reads '.run'",
    "$monai.data.load_decathlon_datalist(@data_list_file_path, data_list_key='testing', base_dir=@dataset_dir)": (
        "monai.data.load_decathlon_datalist"
    ),
}

#: The published bundles (Testing/data/model_zoo) whose inference path needs no bundle code.
UNTRUSTED_BUNDLES = (
    "spleen_ct_segmentation",
    "swin_unetr_btcv_segmentation",
    "wholeBody_ct_segmentation",
    "pancreas_ct_dints_segmentation",
    "multi_organ_segmentation",
    "pediatric_abdominal_ct_segmentation",
    "prostate_mri_anatomy",
    "brats_mri_segmentation",
)
MODEL_ZOO = Path(__file__).parent / "data" / "model_zoo"
SEGMENT_IDS = ("network_def", "preprocessing", "inferer", "postprocessing")


def _transform(target: str, **kwargs: object) -> dict:
    return {"_target_": target, "keys": "@image_key", **kwargs}


#: models/spleen_ct_segmentation/configs/inference.json as published (model-zoo dfae206d).
SPLEEN_INFERENCE = {
    "imports": ["$import glob", "$import numpy", "$import os"],
    "bundle_root": ".",
    "image_key": "image",
    "output_dir": "$@bundle_root + '/eval'",
    "output_ext": ".nii.gz",
    "output_dtype": "$numpy.float32",
    "output_postfix": "trans",
    "separate_folder": True,
    "load_pretrain": True,
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            _transform("LoadImaged"),
            _transform("EnsureChannelFirstd"),
            _transform("Orientationd", axcodes="RAS"),
            _transform("Spacingd", pixdim=[1.5, 1.5, 2.0], mode="bilinear"),
            _transform("ScaleIntensityRanged", a_min=-57, a_max=164, b_min=0, b_max=1, clip=True),
            _transform("EnsureTyped"),
        ],
    },
    "dataset": {
        "_target_": "Dataset",
        "data": "$[{'image': i} for i in @datalist]",
        "transform": "@preprocessing",
    },
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 4,
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": [96, 96, 96],
        "sw_batch_size": 4,
        "overlap": 0.5,
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "@image_key",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_ext": "@output_ext",
                "output_dtype": "@output_dtype",
                "output_postfix": "@output_postfix",
                "separate_folder": "@separate_folder",
            },
        ],
    },
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": True,
    },
    "checkpointloader": {
        "_target_": "CheckpointLoader",
        "load_path": "$@bundle_root + '/models/model.pt'",
        "load_dict": {"model": "@network"},
    },
    "initialize": [
        "$monai.utils.set_determinism(seed=123)",
        "$@checkpointloader(@evaluator) if @load_pretrain else None",
    ],
    "run": ["$@evaluator.run()"],
}

#: The network part of models/pancreas_ct_dints_segmentation/configs/inference.yaml.
PANCREAS_DINTS_NETWORK = {
    "imports": ["$import glob", "$import numpy", "$import os"],
    "input_channels": 1,
    "output_classes": 3,
    "arch_ckpt_path": "$@bundle_root + '/models/search_code_18590.pt'",
    "arch_ckpt": "$torch.load(@arch_ckpt_path, map_location=torch.device('cuda'))",
    "bundle_root": ".",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "dints_space": {
        "_target_": "monai.networks.nets.TopologyInstance",
        "channel_mul": 1,
        "num_blocks": 12,
        "num_depths": 4,
        "use_downsample": True,
        "arch_code": ["$@arch_ckpt['arch_code_a']", "$@arch_ckpt['arch_code_c']"],
        "device": "$torch.device('cuda')",
    },
    "network_def": {
        "_target_": "monai.networks.nets.DiNTS",
        "dints_space": "@dints_space",
        "in_channels": "@input_channels",
        "num_classes": "@output_classes",
        "use_downsample": True,
        "node_a": "$torch.from_numpy(@arch_ckpt['node_a'])",
    },
    "network": "$@network_def.to(@device)",
    "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
}

TINY_METADATA = {
    "name": "Tiny spleen",
    "version": "0.1.0",
    "monai_version": "1.6.1",
    "description": "test bundle",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "hounsfield",
                "modality": "CT",
                "num_channels": 1,
                "spatial_shape": [16, 16, 16],
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "format": "segmentation",
                "num_channels": 2,
                "channel_def": {"0": "background", "1": "spleen"},
            }
        },
    },
}


def _tiny_inference_config() -> dict:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["network_def"].update(channels=[4, 8], strides=[2], num_res_units=1)
    config["network_def"]["out_channels"] = "@_meta_::network_data_format::outputs::pred::num_channels"
    config["inferer"]["roi_size"] = [16, 16, 16]
    return config


def _write_bundle(root: Path, *, weights: bool = True) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(TINY_METADATA))
    (root / "configs" / "inference.json").write_text(json.dumps(_tiny_inference_config()))
    (root / "docs" / "README.md").write_text("# Tiny spleen\n")
    if weights:
        network = SafeConfigParser(_tiny_inference_config() | {"_meta_": TINY_METADATA}).get_parsed_content(
            "network_def"
        )
        torch.save({"state_dict": network.state_dict(), "epoch": 3}, root / "models" / "model.pt")
    return root


def _write_image(path: Path) -> Path:
    data = np.arange(12 * 10 * 8, dtype=np.float32).reshape(12, 10, 8) - 300.0
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 1.5, 3.0, 1.0])), str(path))
    return path


def test_published_inference_expressions_pass_the_static_check() -> None:
    for expression in PUBLISHED_EXPRESSIONS:
        assert check_expression(expression) == [], expression
    for expression, rule in WORKFLOW_EXPRESSIONS.items():
        problems = check_expression(expression)
        assert problems and rule in problems[0], (expression, problems)


def test_published_spleen_and_dints_configs_pass_check_config() -> None:
    assert check_config(PANCREAS_DINTS_NETWORK) == []
    assert check_config(SPLEEN_INFERENCE, ids=["network", "preprocessing", "inferer", "postprocessing"]) == []
    # MONAI's own workflow items (dataset, loader, evaluator, handlers, initialize, run) are not
    # inference components: the whole config lists them, the inference path does not reach them.
    workflow = {problem.split(":")[0] for problem in check_config(SPLEEN_INFERENCE)}
    assert workflow == {
        "dataset",
        "dataloader",
        "evaluator",
        "checkpointloader",
        "handlers",
        "initialize",
        "run",
    }


@pytest.mark.parametrize("bundle", UNTRUSTED_BUNDLES)
def test_inference_path_of_published_bundles_passes_and_builds(bundle: str) -> None:
    """Everything the engine reads of the published config is allowed; the items build (random weights)."""
    root = MODEL_ZOO / bundle
    config = load_config_file(next((root / "configs").glob("inference.*")))
    ids = [i for i in SEGMENT_IDS if i in config]
    assert check_config(config, ids=ids, bundle_root=root) == []
    parser = safe_parse_bundle_config(root, ids=ids)
    for item in ("preprocessing", "inferer", "postprocessing"):
        assert parser.get_parsed_content(item) is not None
    steps = [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]
    assert steps[-1] == "EngineIOStep"  # SaveImaged is never built: the engine writes the output
    loader = parser.get_parsed_content("preprocessing").transforms[0]
    assert type(loader).__name__ == "EngineIOStep"
    with pytest.raises(UnsafeConfigError, match="may not open files"):
        loader({"image": "/etc/hostname"})


def test_imports_count_only_where_the_inference_path_uses_them() -> None:
    """prostate's ``import pandas`` and pediatric's ``import scripts.monai_utils`` serve only the workflow."""
    prostate = load_config_file(MODEL_ZOO / "prostate_mri_anatomy" / "configs" / "inference.json")
    assert any("pandas" in p for p in check_config(prostate))  # the whole config
    assert check_config(prostate, ids=["network_def", "preprocessing"]) == []
    used = copy.deepcopy(prostate) | {"frame": "$pd.DataFrame()", "network_def": "$@frame"}
    problems = check_config(used, ids=["network_def"])
    assert problems[0] == (
        "imports::0: import '$import pandas as pd' names module 'pandas', which is not on the allow-list"
    )
    with pytest.raises(UnsafeConfigError, match="pandas"):
        SafeConfigParser(used).get_parsed_content("network_def")
    assert type(SafeConfigParser(prostate).get_parsed_content("inferer")).__name__ == "SlidingWindowInferer"


@pytest.mark.parametrize(
    ("bundle", "item", "rule"),
    [
        ("renalStructures_CECT_segmentation", "preprocessing::transforms::4", "bundle code (scripts.*)"),
        ("wholeBrainSeg_Large_UNEST_segmentation", "network_def", "bundle code (scripts.*)"),
    ],
)
def test_bundles_with_their_own_code_are_refused_naming_item_and_rule(
    bundle: str, item: str, rule: str
) -> None:
    root = MODEL_ZOO / bundle
    config = load_config_file(root / "configs" / "inference.json")
    problems = check_config(config, ids=list(SEGMENT_IDS), bundle_root=root)
    assert any(p.startswith(f"{item}: ") and rule in p for p in problems), problems
    with pytest.raises(UnsafeConfigError) as refused:
        safe_parse_bundle_config(root, ids=list(SEGMENT_IDS))
    message = str(refused.value)
    assert "\n" not in message and problems[0] in message and "--trust" in message


def test_brats_output_lambda_gives_what_monai_eval_gives() -> None:
    """BraTS's ``$lambda`` (sigmoid channels -> labels 0/1/2/4) runs interpreted, same values as eval."""
    config = load_config_file(MODEL_ZOO / "brats_mri_segmentation" / "configs" / "inference.json")
    ours = SafeConfigParser(copy.deepcopy(config)).get_parsed_content("postprocessing::transforms::3")
    theirs = ConfigParser(copy.deepcopy(config)).get_parsed_content("postprocessing::transforms::3")
    channels = (torch.rand(3, 12, 10, 8) > 0.5).float()
    torch.testing.assert_close(ours({"pred": channels})["pred"], theirs({"pred": channels})["pred"])
    assert set(torch.unique(ours({"pred": channels})["pred"]).tolist()) <= {0, 1, 2, 4}


def test_check_config_can_be_limited_to_the_items_a_caller_builds() -> None:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    config["postprocessing"]["transforms"].append(
        {"_target_": "Lambdad", "keys": "pred", "func": "$lambda x: x"}
    )
    config["postprocessing"]["transforms"][4]["func"] = "$lambda x: x.__class__"
    config["imports"].append("$from monai.networks.nets import UNet")
    # building a component inside an expression would skip its argument checks
    config["plain_net"] = (
        "$UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))"
    )
    assert check_config(config, ids=["network", "preprocessing"]) == []
    assert "plain_net: " in check_config(config, ids=["plain_net"])[0]
    inference = check_config(config, ids=["network", "preprocessing", "postprocessing"])
    assert inference == [
        "postprocessing::transforms::4::func: '$lambda x: x.__class__' reads the private attribute '.__class__'"
    ]
    parser = safe_parse_bundle_config(config, ids=["network", "preprocessing"])
    assert type(parser.get_parsed_content("network")).__name__ == "UNet"
    with pytest.raises(UnsafeConfigError, match="__class__"):
        safe_parse_bundle_config(config, ids=["postprocessing"])
    with pytest.raises(ModelFileError, match="no item 'nowhere'"):
        check_config(config, ids=["nowhere"])


# ----------------------------------------------------------------------- refused expressions


def _malicious_expressions(marker: Path) -> list[str]:
    return [
        f"$__import__('os').system('touch {marker}')",
        f"$open('{marker}', 'w').write('x')",
        "$().__class__.__bases__[0].__subclasses__()",
        f"$[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{marker}'])",
        f"$getattr(os, 'system')('touch {marker}')",
        f"$eval(\"__import__('os').system('touch {marker}')\")",
        f"$exec(\"__import__('os').system('touch {marker}')\")",
        f"$os.system('touch {marker}')",
        f"$(lambda: os.system('touch {marker}'))()",
        f"$f'{{os.system(\"touch {marker}\")}}'",
        f"$monai.transforms.utils.os.system('touch {marker}')",
        "$torch.hub.load('someone/repo', 'model')",
        f"$numpy.load('{marker}.npy', allow_pickle=True)",
        f"$copy.deepcopy.__globals__['__builtins__']['open']('{marker}', 'w')",
        "$setattr(os, 'system', print)",
        f"$[x for x in [os]][0].system('touch {marker}')",
        "$scripts.prepare(1)",
        f"$numpy.array([1]).tofile('{marker}')",
        f"$torch.zeros(1).numpy().dump('{marker}')",
    ]


def test_malicious_expressions_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for expression in _malicious_expressions(marker):
        config = {"evil": expression, "net": "$@evil"}
        problems = check_config(config)
        assert problems and problems[0].startswith("evil: "), (expression, problems)
        with pytest.raises(UnsafeConfigError) as refused:
            safe_parse_bundle_config(config)
        message = str(refused.value)
        assert "--trust" in message and "\n" not in message and repr(expression)[1:20] in message
        # The interpreter refuses on its own too, without the static check in front of it.
        with pytest.raises(UnsafeConfigError, match="--trust"):
            SafeConfigParser(config).get_parsed_content("net")
        assert not marker.exists(), expression

    # Positive control: MONAI's own parser (what trusted=True gives) runs the first payload.
    trusted = safe_parse_bundle_config({"evil": _malicious_expressions(marker)[0]}, trusted=True)
    assert type(trusted) is ConfigParser
    trusted.get_parsed_content("evil")
    assert marker.exists()


def test_resource_bombs_are_refused_while_evaluating() -> None:
    for expression in (
        "$10 ** 10 ** 10",
        "$'x' * 10 ** 10",
        "$list(range(10 ** 10))",
        "$[0 for i in [0] * 10**6 for j in [0] * 10**6]",
    ):
        assert (
            check_expression(expression) == []
        )  # allowed constructs; the sizes are checked as they are computed
        with pytest.raises(UnsafeConfigError, match="--trust"):
            evaluate_expression(expression)


def test_imports_of_bundle_code_and_unknown_modules_are_refused(tmp_path: Path) -> None:
    for statement in (
        "$import scripts",
        "$from scripts.utils import helper",
        "$import subprocess",
        "$import sys",
    ):
        config = {"imports": [statement, "$import glob"], "value": "$glob.glob('*.none')"}
        problems = check_config(config)
        assert len(problems) == 1 and problems[0].startswith("imports::0: "), problems
        with pytest.raises(UnsafeConfigError, match="--trust"):
            SafeConfigParser(config).get_parsed_content("value")
    assert "bundle code" in check_config({"imports": ["$import scripts"]})[0]
    assert "bundle's own code" in check_config({"x": "$scripts.utils.run(1)"})[0]


def test_unsafe_targets_and_arguments_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    configs = {
        "os.system": {"_target_": "os.system", "command": f"touch {marker}"},
        "scripts": {"_target_": "scripts.net.Net", "channels": 3},
        "escape via monai module": {
            "_target_": "monai.transforms.utils.os.system",
            "command": f"touch {marker}",
        },
        "subprocess": {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
        "expression target": {"_target_": "$@other", "x": 1},
        "debug mode": {"_target_": "UNet", "_mode_": "debug", "spatial_dims": 3},
        "reader locate": {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": "subprocess.Popen",
            "args": ["touch", str(marker)],
        },
        "numpy pickle": {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": "NumpyReader",
            "allow_pickle": True,
        },
    }
    for name, component in configs.items():
        config = {"other": 1, "item": component}
        problems = check_config(config)
        assert problems and problems[0].startswith("item: "), (name, problems)
        with pytest.raises(UnsafeConfigError, match="--trust"):
            safe_parse_bundle_config(config)
        with pytest.raises(UnsafeConfigError, match="item"):
            SafeConfigParser(config).get_parsed_content("item")
        assert not marker.exists(), name

    # Positive control: MONAI's own parser turns reader="subprocess.Popen" into a process.
    ConfigParser({"item": configs["reader locate"]}).get_parsed_content("item")
    for _ in range(50):  # the child process runs asynchronously
        if marker.exists():
            break
        torch.multiprocessing.Event().wait(0.1)
    assert marker.exists()


def test_check_target_allows_monai_networks_transforms_and_the_vetted_list() -> None:
    assert check_target("UNet") == "monai.networks.nets.unet.UNet"
    assert check_target("monai.networks.nets.DiNTS") == "monai.networks.nets.dints.DiNTS"
    assert check_target("LoadImaged") == "monai.transforms.io.dictionary.LoadImaged"
    assert check_target("Compose") == "monai.transforms.compose.Compose"
    for name in ("SlidingWindowInferer", "SimpleInferer", "KeepLargestConnectedComponentd", "torch.device"):
        check_target(name)
    for name in (
        "DataLoader",  # workflow components: never built for an untrusted bundle
        "CheckpointLoader",
        "WriteFileMapping",  # writes files
        "HoVerNet",  # downloads weights in its constructor
        "DenseNet121",
        "os.system",
        "torch.hub.load",
        "monai.bundle.run",
        "builtins.eval",
        "numpy.load",
        "scripts.x.Y",
        "",
    ):
        with pytest.raises(UnsafeConfigError, match=r"_target_ .* --trust"):
            check_target(name)


# ------------------------------------------------------------------- same values as MONAI


def test_safe_parser_builds_what_monai_builds_on_a_spleen_like_config(tmp_path: Path) -> None:
    (tmp_path / "imagesTs").mkdir()
    image = _write_image(tmp_path / "imagesTs" / "case_1.nii.gz")
    config = _tiny_inference_config()
    config.update(
        bundle_root=str(tmp_path),
        dataset_dir=str(tmp_path),
        displayable_configs={"highres": False},
        pixdim="$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
        modelname="$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
        load_path="$@bundle_root + '/models/' + @modelname",
        image_constant="$monai.utils.CommonKeys.IMAGE",
        joined="$os.path.join(@bundle_root, 'eval')",
        sizes="$[len(@datalist), max([2, 3]) // 2, 7 % 4, -(2 ** 3), 1 < 2 <= 2, 'a' in 'abc', not None]",
        by_key="${k: v for k, v in zip(['a', 'b'], range(2))}",
        _meta_=TINY_METADATA,
    )
    config["preprocessing"]["transforms"][3]["pixdim"] = "@pixdim"
    ours = SafeConfigParser(copy.deepcopy(config), bundle_root=tmp_path)
    monai = ConfigParser(copy.deepcopy(config))

    for item in ("output_dir", "output_dtype", "datalist", "device", "pixdim", "modelname", "load_path"):
        assert ours.get_parsed_content(item) == monai.get_parsed_content(item), item
    for item in ("image_constant", "joined", "sizes", "by_key", "dataset::data"):
        assert ours.get_parsed_content(item) == monai.get_parsed_content(item), item
    assert ours.get_parsed_content("datalist") == [str(image)]

    net_ours, net_monai = ours.get_parsed_content("network"), monai.get_parsed_content("network")
    assert repr(net_ours) == repr(net_monai)
    net_ours.load_state_dict(net_monai.state_dict())
    batch = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net_ours.eval()(batch), net_monai.eval()(batch))

    # The loader of an untrusted config is the engine's: the stand-in passes loaded data through.
    sample = monai.get_parsed_content("preprocessing").transforms[0]({"image": str(image)})
    pre_ours = ours.get_parsed_content("preprocessing")(dict(sample))
    pre_monai = monai.get_parsed_content("preprocessing")({"image": str(image)})
    assert pre_ours["image"].ndim == 4 and pre_ours["image"].shape == pre_monai["image"].shape
    torch.testing.assert_close(pre_ours["image"].as_tensor(), pre_monai["image"].as_tensor())
    torch.testing.assert_close(pre_ours["image"].affine, pre_monai["image"].affine)

    inferer = ours.get_parsed_content("inferer")
    assert type(inferer) is type(monai.get_parsed_content("inferer")) and list(inferer.roi_size) == [
        16,
        16,
        16,
    ]
    post = [type(t).__name__ for t in ours.get_parsed_content("postprocessing").transforms]
    assert post == ["Activationsd", "Invertd", "AsDiscreted", "EngineIOStep"]  # never writes a file


def test_setattr_is_limited_to_cudnn_flags() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        assert (
            evaluate_expression("$setattr(torch.backends.cudnn, 'benchmark', not @flag)", {"flag": before})
            is None
        )
        assert torch.backends.cudnn.benchmark is (not before)
    finally:
        torch.backends.cudnn.benchmark = before
    with pytest.raises(UnsafeConfigError, match="setattr"):
        evaluate_expression("$setattr(torch.backends.cudnn, 'enabled', 'yes')")


def test_expression_errors_are_one_line_model_file_errors() -> None:
    with pytest.raises(ModelFileError, match="'@missing', which is not defined"):
        evaluate_expression("$@missing + 1", {})
    with pytest.raises(ModelFileError, match="ZeroDivisionError"):
        evaluate_expression("$1 / 0")
    with pytest.raises(ModelFileError, match="not valid Python"):
        evaluate_expression("$[1, 2")


# -------------------------------------------------------------------------------- weights


class _SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
@pytest.mark.parametrize("layout", ["zip", "legacy", "raw pickle"])
def test_malicious_pickle_weights_are_refused_and_never_run(
    tmp_path: Path, payload: type, layout: str
) -> None:
    marker = tmp_path / "MARKER"
    weights = tmp_path / "model.pt"
    content = {"state_dict": {"conv.weight": torch.zeros(2, 2)}, "extra": payload(marker)}
    if layout == "raw pickle":
        weights.write_bytes(pickle.dumps(content, protocol=4))
    else:
        torch.save(content, weights, _use_new_zipfile_serialization=layout == "zip")

    for load in (load_weights, load_checkpoint):
        with pytest.raises(UnsafeModelError) as refused:
            load(weights)
        message = str(refused.value)
        assert "\n" not in message and str(weights) in message and "--trust" in message
        assert "not allowed" in message and ("system" in message or "exec" in message)
    assert not marker.exists()

    # Positive control: a trusted load (plain pickle for a raw pickle) runs the payload.
    if layout == "raw pickle":
        pickle.loads(weights.read_bytes())
    else:
        load_checkpoint(weights, trusted=True)
    assert marker.exists()


def test_corrupt_truncated_and_torchscript_weights_give_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(1000)}, good)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(1000)}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "truncated.pt": good.read_bytes()[: good.stat().st_size // 2],
        "truncated_legacy.pt": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "garbage.pt": np.random.default_rng(0).bytes(2000),
        "empty.pt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError) as error:
            load_weights(tmp_path / name)
        assert not isinstance(error.value, UnsafeModelError), name
        assert "\n" not in str(error.value) and name in str(error.value)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_weights(tmp_path / "missing.pt")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(tmp_path / "model.ts"))
    with pytest.raises(ModelFileError, match="TorchScript"):
        load_weights(tmp_path / "model.ts")


def test_state_dict_layouts_and_ddp_prefix(tmp_path: Path) -> None:
    state = {"conv.weight": torch.ones(2, 3), "conv.bias": torch.zeros(2)}
    ddp = {f"module.{k}": v for k, v in state.items()}
    layouts = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}},
        "model": {"model": ddp},
        "network": {"network": state, "best_metric": np.float64(0.9)},
    }
    for name, content in layouts.items():
        torch.save(content, tmp_path / f"{name}.pt")
        loaded = load_weights(tmp_path / f"{name}.pt")
        assert set(loaded) == set(state), name
        torch.testing.assert_close(loaded["conv.weight"], state["conv.weight"])
    torch.save({"module.a": torch.ones(1), "b": torch.ones(1)}, tmp_path / "mixed.pt")
    assert set(load_weights(tmp_path / "mixed.pt")) == {"module.a", "b"}
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pt")
    with pytest.raises(ModelFileError, match="no tensors"):
        load_weights(tmp_path / "no_tensors.pt")


def _save_search_code(path: Path) -> dict[str, np.ndarray]:
    from monai.networks.nets import TopologySearch

    space = TopologySearch(channel_mul=0.25, num_blocks=2, num_depths=2, use_downsample=True, device="cpu")
    node_a, arch_code_a, arch_code_c, arch_code_a_max = space.decode()
    code = {"node_a": node_a, "arch_code_a": arch_code_a, "arch_code_a_max": arch_code_a_max}
    code["arch_code_c"] = arch_code_c
    torch.save({**code, "iter_num": 10, "epochs": 2}, path)
    return code


def test_dints_search_code_with_numpy_arrays_loads_weights_only(tmp_path: Path) -> None:
    search_code = tmp_path / "models" / "search_code_18590.pt"
    search_code.parent.mkdir()
    code = _save_search_code(search_code)
    with pytest.raises(pickle.UnpicklingError):  # why the allow-list is needed with torch >= 2.6
        torch.load(search_code, weights_only=True)

    tensors = load_weights(search_code)
    assert set(tensors) == {"node_a", "arch_code_a", "arch_code_a_max", "arch_code_c"}
    torch.testing.assert_close(tensors["arch_code_c"], torch.from_numpy(code["arch_code_c"]))
    lists = load_arch_code(search_code)
    assert lists["node_a"] == code["node_a"].astype(int).tolist()
    assert json.loads(json.dumps(lists)) == lists

    # A file written with numpy 1.x names numpy.core.multiarray; it must load too.
    legacy = tmp_path / "legacy_code.pt"
    torch.save(code, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in legacy.read_bytes()
    assert load_arch_code(legacy)["arch_code_a"] == lists["arch_code_a"]

    # The published DiNTS config builds its network from the file (cuda in the config is ignored).
    config = copy.deepcopy(PANCREAS_DINTS_NETWORK)
    config["bundle_root"] = str(tmp_path)
    config["dints_space"].update(num_blocks=2, num_depths=2, channel_mul=0.25, device="$torch.device('cpu')")
    network = safe_parse_bundle_config(config, bundle_root=tmp_path).get_parsed_content("network")
    assert type(network).__name__ == "DiNTS"
    torch.testing.assert_close(network.node_a, torch.from_numpy(code["node_a"]))
    with torch.no_grad():
        assert network(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


# ------------------------------------------------------------------------------- archives


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _zip_with(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)  # keeps the name as given: zf.write() would sanitise it
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


def _assert_refused_cleanly(archive: Path, root: Path, entry: str, **limits: int) -> None:
    before = _listing(root)
    dest = root / "out" / "bundle"
    with pytest.raises(UnsafeArchiveError) as refused:
        safe_extract(archive, dest, **limits)
    assert entry in str(refused.value) and "\n" not in str(refused.value)
    assert not dest.exists()
    assert _listing(root) - before <= {"out"}  # no staging folder or escaped file left behind


def test_zip_path_traversal_and_absolute_paths_are_refused(tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    inside.mkdir()
    escaped = tmp_path / "escaped.txt"
    traversal = _zip_with(inside / "traversal.zip", {"bundle/ok.txt": b"ok", "../../escaped.txt": b"pwned"})
    _assert_refused_cleanly(traversal, inside, "../../escaped.txt")
    absolute = _zip_with(inside / "absolute.zip", {"bundle/ok.txt": b"ok", str(escaped): b"pwned"})
    assert zipfile.ZipFile(absolute).namelist()[1].startswith("/")
    _assert_refused_cleanly(absolute, inside, str(escaped))
    windows = _zip_with(inside / "windows.zip", {"..\\..\\escaped.txt": b"pwned"})
    _assert_refused_cleanly(windows, inside, "escaped.txt")
    assert not escaped.exists()


def test_zip_bombs_are_refused_from_the_headers(tmp_path: Path) -> None:
    bomb = _zip_with(tmp_path / "zeros.zip", {"a.bin": bytes(3 * 1024 * 1024)})
    assert bomb.stat().st_size < 100_000
    _assert_refused_cleanly(bomb, tmp_path, "a.bin", max_total_bytes=1024 * 1024)

    # Two entries whose central-directory headers claim 3.75 GiB each: over the 4 GiB default.
    forged = bytearray(
        _zip_with(tmp_path / "forged.zip", {"a.bin": b"x" * 100, "b.bin": b"y" * 100}).read_bytes()
    )
    start = 0
    while (start := forged.find(b"PK\x01\x02", start)) >= 0:
        forged[start + 24 : start + 28] = (0xF0000000).to_bytes(4, "little")
        start += 4
    (tmp_path / "forged.zip").write_bytes(bytes(forged))
    _assert_refused_cleanly(tmp_path / "forged.zip", tmp_path, "b.bin")

    many = _zip_with(tmp_path / "many.zip", {f"f{i}.txt": b"" for i in range(12)})
    _assert_refused_cleanly(many, tmp_path, "f10.txt", max_files=10)


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            payload = (data or {}).get(member.name)
            if payload is not None:
                member.size = len(payload)
            tf.addfile(member, io.BytesIO(payload) if payload is not None else None)
    return path


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = link
    return member


def test_tar_links_devices_and_traversal_are_refused(tmp_path: Path) -> None:
    inside = tmp_path / "inside"
    inside.mkdir()
    cases = {
        "symlink out": [_tar_member("bundle/configs", tarfile.SYMTYPE, "../../..")],
        "absolute symlink": [_tar_member("bundle/etc", tarfile.SYMTYPE, "/etc")],
        "hardlink out": [_tar_member("bundle/passwd", tarfile.LNKTYPE, "../../escaped.txt")],
        "device": [_tar_member("bundle/disk", tarfile.CHRTYPE)],
        "fifo": [_tar_member("bundle/pipe", tarfile.FIFOTYPE)],
        "traversal": [_tar_member("bundle/../../escaped.txt")],
    }
    for name, members in cases.items():
        archive = _tar_with(
            inside / f"{name.replace(' ', '_')}.tar.gz", members, {"bundle/../../escaped.txt": b"x"}
        )
        _assert_refused_cleanly(archive, inside, members[0].name)
    assert not (tmp_path / "escaped.txt").exists()


def test_clean_bundle_archives_extract_and_inspect(tmp_path: Path) -> None:
    bundle = _write_bundle(tmp_path / "src" / "tiny_spleen")
    with zipfile.ZipFile(tmp_path / "tiny.zip", "w") as zf:
        for file in sorted(bundle.rglob("*")):
            zf.write(file, file.relative_to(bundle.parent))
    dest = safe_extract(tmp_path / "tiny.zip", tmp_path / "registry" / "tiny")
    assert _listing(dest) == {f"tiny_spleen/{p}" for p in _listing(bundle)} | {"tiny_spleen"}
    root = find_bundle_root(dest)
    assert (root / "models" / "model.pt").read_bytes() == (bundle / "models" / "model.pt").read_bytes()
    assert inspect_bundle(dest).name == "Tiny spleen"

    with tarfile.open(tmp_path / "tiny.tar.gz", "w:gz") as tf:
        tf.add(bundle, arcname="tiny_spleen")
        tf.addfile(_tar_member("tiny_spleen/docs/readme_link", tarfile.SYMTYPE, "README.md"))
    dest_tar = safe_extract(tmp_path / "tiny.tar.gz", tmp_path / "registry" / "tiny_tar")
    assert (dest_tar / "tiny_spleen" / "docs" / "readme_link").read_text() == "# Tiny spleen\n"

    with pytest.raises(ModelFileError, match="not an empty folder"):
        safe_extract(tmp_path / "tiny.zip", dest)
    (tmp_path / "broken.zip").write_bytes((tmp_path / "tiny.zip").read_bytes()[:300])
    with pytest.raises(ModelFileError, match="not a .zip or .tar"):
        safe_extract(tmp_path / "broken.zip", tmp_path / "registry" / "broken")


# ------------------------------------------------------------------------- bundle folders


def test_inspect_bundle_reads_metadata_and_locates_pieces(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "tiny_spleen")
    info = inspect_bundle(root)
    assert (info.name, info.version, info.modality, info.input_format) == (
        "Tiny spleen",
        "0.1.0",
        "CT",
        "hounsfield",
    )
    assert info.label_names == {0: "background", 1: "spleen"}
    assert (info.in_channels, info.out_channels, info.spatial_shape) == (1, 2, (16, 16, 16))
    assert info.inference_config == root / "configs" / "inference.json"
    assert info.weights == root / "models" / "model.pt" and info.readme == root / "docs" / "README.md"


def test_inspect_bundle_names_the_missing_or_invalid_piece(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "b", weights=False)
    (root / "large_files.yml").write_text("large_files: []\n")
    with pytest.raises(ModelFileError, match=r"no weights file models/model.pt .*large_files.yml"):
        inspect_bundle(root)
    assert inspect_bundle(root, require_weights=False).weights is None

    (root / "configs" / "inference.json").rename(root / "configs" / "inference.yaml")
    assert inspect_bundle(root, require_weights=False).inference_config.name == "inference.yaml"
    (root / "configs" / "inference.yaml").unlink()
    with pytest.raises(ModelFileError, match=r"no configs/inference.json \(or .yaml\)"):
        inspect_bundle(root, require_weights=False)

    (root / "configs" / "metadata.json").write_text('{"name": "x",, }')
    with pytest.raises(ModelFileError, match=r"metadata.json is not valid JSON: .* line 1"):
        inspect_bundle(root, require_weights=False)
    (root / "configs" / "metadata.json").unlink()
    with pytest.raises(ModelFileError, match="configs/metadata.json is missing"):
        inspect_bundle(root)
    with pytest.raises(ModelFileError, match="does not exist"):
        inspect_bundle(tmp_path / "nowhere")


def test_yaml_configs_are_read_with_the_safe_loader(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "inference.yaml"
    path.write_text(f"evil: !!python/object/apply:os.system ['touch {marker}']\nvalue: 1\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ModelFileError, match="pip install pyyaml"):
            load_config_file(path)
    else:
        with pytest.raises(ModelFileError, match="not valid YAML"):
            load_config_file(path)
        path.write_text("value: 1\nitems: [1, 2]\n")
        assert load_config_file(path) == {"value": 1, "items": [1, 2]}
    assert not marker.exists()


def test_bundle_folder_to_network_with_weights(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "tiny_spleen")
    info = inspect_bundle(root)
    parser = safe_parse_bundle_config(root, ids=["network", "preprocessing"])
    assert parser["bundle_root"] == str(root) and parser["_meta_"]["name"] == "Tiny spleen"
    network = parser.get_parsed_content("network")
    network.load_state_dict(load_weights(info.weights))
    saved = torch.load(info.weights, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        network.state_dict()["model.0.conv.unit0.conv.weight"], saved["model.0.conv.unit0.conv.weight"]
    )
    with torch.no_grad():
        assert network.eval()(torch.rand(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_macros_may_only_read_files_inside_the_bundle(tmp_path: Path) -> None:
    root = _write_bundle(tmp_path / "b", weights=False)
    (root / "configs" / "common.json").write_text(
        json.dumps({"net": {"_target_": "UNet", "spatial_dims": 3}})
    )
    (tmp_path / "outside.json").write_text(json.dumps({"net": {"_target_": "UNet"}}))
    (root / "configs" / "sneaky.json").write_text(json.dumps({"evil": "$__import__('os').getcwd()"}))

    assert check_config({"a": "%configs/common.json::net::spatial_dims"}, bundle_root=root) == []
    parser = SafeConfigParser({"a": "%configs/common.json::net::spatial_dims"}, bundle_root=root)
    assert parser.get_parsed_content("a") == 3
    for macro in ("%../outside.json::net", f"%{tmp_path / 'outside.json'}::net"):
        problems = check_config({"a": macro}, bundle_root=root)
        assert len(problems) == 1 and "outside the bundle" in problems[0]
    problems = check_config({"a": "%configs/sneaky.json::evil"}, bundle_root=root)
    assert problems and all(p.startswith("a: ") for p in problems) and "name '__import__'" in problems[0]
    with pytest.raises(UnsafeConfigError, match="outside the bundle"):
        SafeConfigParser({"a": "%../outside.json::net"}, bundle_root=root).get_parsed_content("a")


def test_errors_are_medsegnas_errors() -> None:
    for error in (UnsafeConfigError, UnsafeModelError, UnsafeArchiveError, ModelFileError):
        assert issubclass(error, MedSegNASError)
    assert "--trust" not in str(UnsafeArchiveError("entry 'x' has a '..' path component"))


# ------------------------------------------------------------------ capability allow-list


def test_supported_monai_and_torch_versions_are_pinned_and_installed() -> None:
    """The safety argument holds for a version range: pyproject pins it, the installed versions are inside."""
    import importlib.metadata

    import tomllib
    from MedSegNASLib.models.capabilities import SUPPORTED_MONAI, SUPPORTED_TORCH
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pinned = {Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["dependencies"]}
    assert pinned["monai"] == SpecifierSet(SUPPORTED_MONAI) and pinned["torch"] == SpecifierSet(
        SUPPORTED_TORCH
    )
    for package, supported in (("monai", SUPPORTED_MONAI), ("torch", SUPPORTED_TORCH)):
        installed = Version(importlib.metadata.version(package).split("+")[0])
        assert installed in SpecifierSet(supported), (package, installed, supported)
    # what the argument rests on in that range: weights-only loading with an allow-list context
    assert hasattr(torch.serialization, "safe_globals")


def test_capability_arguments_exist_in_the_installed_monai() -> None:
    """Each allowed component exists and takes each allowed argument (the list cannot drift silently)."""
    import inspect

    from MedSegNASLib.models.capabilities import COMPONENTS, component_rule

    removed_in_this_monai = {("SwinUNETR", "img_size")}  # published configs still pass it
    for name, rule in COMPONENTS.items():
        module, _, attr = rule.path.rpartition(".")
        obj = getattr(__import__(module, fromlist=[attr]), attr)
        assert component_rule(obj)[0] == name
        if name == "torch.device":
            continue
        parameters = inspect.signature(obj).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        for argument in rule.args:
            assert argument in parameters or takes_kwargs or (name, argument) in removed_in_this_monai, (
                name,
                argument,
            )


def test_no_allowed_argument_downloads_or_names_a_file() -> None:
    """Only the engine I/O stand-ins (which never touch files) take path-like arguments."""
    import re as regex

    from MedSegNASLib.models.capabilities import COMPONENTS

    # (cache_roi_weight_map of SlidingWindowInferer caches in memory)
    risky = regex.compile(
        r"pretrain|url|download|^path|_path$|file|^dir|_dir$|cache_dir|writer|hub|^load", regex.I
    )
    for name, rule in COMPONENTS.items():
        if rule.kind == "engine_io":
            continue
        assert not [a for a in rule.args if risky.search(a)], name


def test_argument_types_and_ranges_are_checked_before_building() -> None:
    """Literal values statically; values from expressions and references when the item is built."""
    spacing = {"_target_": "Spacingd", "keys": "image", "pixdim": [0.001, 1, 1]}
    assert "argument 'pixdim' of Spacingd" in check_config({"s": spacing})[0]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "overlap": 0.99}
    assert "argument 'overlap' of SlidingWindowInferer" in check_config({"i": inferer})[0]
    assert (
        "argument 'select_fn' of CropForegroundd"
        in check_config({"c": {"_target_": "CropForegroundd", "keys": "image", "select_fn": "$len"}})[0]
    )
    unet = {"_target_": "UNet", "spatial_dims": 3, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    computed = {"n": "$10 ** 6", "net": {**unet, "in_channels": "@n"}}
    assert check_config(computed) == []  # the value is unknown until evaluated
    with pytest.raises(UnsafeConfigError, match=r"config item 'net': argument 'in_channels' of UNet must be"):
        SafeConfigParser(computed).get_parsed_content("net")
    huge = {"net": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}}
    huge["net"].update(channels=[4096, 4096], strides=[2], num_res_units=2)
    with pytest.raises(UnsafeConfigError, match="MAX_NETWORK_PARAMETERS"):
        SafeConfigParser(huge).get_parsed_content("net")


def test_deepedit_config_for_interactive_models() -> None:
    """spleen_deepedit_annotation: network, inferer and MONAI's guidance transforms pass; its own script does not."""
    root = MODEL_ZOO / "spleen_deepedit_annotation"
    config = load_config_file(root / "configs" / "inference.json")
    ids = ["network_def", "inferer", "preprocessing_transforms", "extra_transforms"]
    assert check_config(config, ids=ids, bundle_root=root) == []
    parser = safe_parse_bundle_config(root, ids=ids)
    assert type(parser.get_parsed_content("network_def")).__name__ == "DynUNet"
    guidance = {"_target_": "AddGuidanceSignalDeepEditd", "keys": "image", "guidance": "guidance"}
    assert check_config({"g": guidance | {"number_intensity_ch": 1}}) == []
    problems = check_config(config, ids=["deepedit_transforms"], bundle_root=root)
    assert problems == [
        "deepedit_transforms::0: _target_ 'scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd' "
        "is bundle code (scripts.*), which is not run"
    ]
