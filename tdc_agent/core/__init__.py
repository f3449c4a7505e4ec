"""The base layer: configuration, data, errors, atomic I/O, devices, progress, redaction and the tally.

The names other layers use, importable from here (``from tdc_agent.core import ...``); each
is loaded from its module on first use, so importing one module of this package does not import
the rest."""

from __future__ import annotations

from .lazy import lazy_exports

_MODULES = {
    "bounds": ["ERROR_CHARS", "JSON_REPLY_CHARS", "NAME_CHARS", "RATIONALE_CHARS", "REPLY_TEXT_CHARS",
               "TRANSCRIPT_CHARS", "cut", "cut_strings"],
    "config": ["AgentConfig", "Config", "ConfigNote", "DataConfig", "MAX_CONFIG_BYTES", "MIN_FD_SAMPLES",
               "SampleConfig", "ScheduleConfig", "TrainConfig", "format_validation_error", "load_config",
               "load_yaml", "stored_config"],
    "backbones": ["BUILTIN_BACKBONES", "add_backbone_name", "backbone_names", "backbone_entry_points", "load_backbone_entry_point",
                  "remove_backbone_name"],
    "lazy": ["lazy_exports"],
    "criteria": ["BUILTIN_CRITERIA", "ENTRY_POINT_GROUP", "add_criterion_name", "check_new_name", "criterion_names",
                 "remove_criterion_name"],
    "data": ["ImageDataset", "load_dataset", "to_uint8"],
    "devices": ["barrier", "dist_env", "init_distributed", "rank0_says", "resolve_device"],
    "errors": ["CheckpointError", "ConfigError", "DataError", "TDCError"],
    "faults": ["failpoint"],
    "fmt": ["fmt_macs_fixed", "fmt_macs_sig3"],
    "io": ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "cache_dir", "check_size", "load_tensors",
           "read_json", "replace_dir", "resolve_dir", "save_tensors"],
    "plots": ["save_figure", "save_grid"],
    "progress": ["console", "make_progress", "track"],
    "redaction": ["RedactingStream", "redact", "redact_url", "register_secret_env", "secret_values"],
    "tally": ["count_step", "step_counts", "steps_since"],
}
__all__, __getattr__ = lazy_exports(__name__, _MODULES)
