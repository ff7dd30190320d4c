"""Models: MONAI bundles read and run without executing code from them.

Importing this package loads neither torch nor MONAI; the names below import their module on
first use.

    info = inspect_bundle(folder)                              # BundleInfo: labels, config, weights
    parser = safe_parse_bundle_config(folder, ids=["network_def"])   # no eval, allow-listed targets
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(load_weights(info.weights))        # torch.load(weights_only=True)
    safe_extract("bundle.zip", dest)                           # path traversal / zip bomb checks

Untrusted content that could run code raises :class:`UnsafeContentError` (a ``MedSegNASError``)
whose message names the file or expression and ``--trust``.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "safety": (
        "TRUST_HINT",
        "UnsafeContentError",
        "UnsafeModelError",
        "UnsafeConfigError",
        "UnsafeArchiveError",
        "ModelFileError",
        "load_checkpoint",
        "load_weights",
        "load_arch_code",
    ),
    "safe_expr": ("check_expression", "evaluate_expression", "check_target", "resolve_target"),
    "bundle": (
        "BundleInfo",
        "SafeConfigParser",
        "check_config",
        "find_bundle_root",
        "inspect_bundle",
        "load_config_file",
        "safe_parse_bundle_config",
    ),
    "archive": ("safe_extract",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
