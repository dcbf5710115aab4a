"""Export of a trained sparse model (issue 7): channel slimming, 2:4 semi-structured weights, a mask
bank file holding many named mask sets, and the files ``twinsparse export`` writes.

* ``export.masking``: ``apply_masks`` / ``param_count`` (masks validated against the model first);
* ``export.slim``: ``slim_channels(model, masks)``, a smaller copy of an ``MLP``, ``SmallCNN`` or
  ``VGG16`` with the dead units / channels physically removed (``SlimReport``);
* ``export.semi_structured``: ``semi_structured_supported(device)`` / ``export_semi_structured``
  (2:4 ``torch.sparse`` weights on an NVIDIA GPU with compute capability >= 8.0, a clear
  ``RuntimeError`` anywhere else) and ``check_export_accuracy``;
* ``export.mask_bank``: ``save_mask_bank`` / ``load_mask_bank``, one file of many named mask sets,
  bit-packed, written atomically; ``MaskBank.apply(model, name)``;
* ``export.files``: the export's two files (a plain state_dict and its JSON), ``write_export`` /
  ``load_export``;
* ``export.command``: ``export_checkpoint`` / ``format_export_report`` / ``load_exported``, what
  ``twinsparse export`` runs.

Each module imports only the ones listed above it. Every public name is also offered here.
"""
from .masking import apply_masks, param_count
from .slim import SlimReport, slim_channels
from .semi_structured import (SEMI_DTYPES, check_export_accuracy, export_semi_structured, is_two_four,
                              semi_structured_supported)
from .mask_bank import (MASK_BANK_FORMAT, MASK_BANK_VERSION, MaskBank, MaskBankError, UnknownMaskSetError,
                        load_mask_bank, save_mask_bank)
from .files import (EXPORT_FORMAT, EXPORT_VERSION, json_path, layer_table, load_export, read_weights, unpack_mask,
                    weights_format, write_export)
from .command import EXPORT_FORMATS, EXPORT_KIND, export_checkpoint, format_export_report, load_exported

__all__ = ["slim_channels", "SlimReport", "apply_masks", "param_count", "semi_structured_supported",
           "export_semi_structured", "is_two_four", "check_export_accuracy", "save_mask_bank", "load_mask_bank",
           "MaskBank", "MaskBankError", "UnknownMaskSetError", "export_checkpoint", "load_exported",
           "EXPORT_FORMATS", "MASK_BANK_FORMAT", "MASK_BANK_VERSION",
           # (public before, outside the old __all__)
           "SEMI_DTYPES", "EXPORT_KIND", "format_export_report",
           # what accel/export_files.py offered
           "EXPORT_FORMAT", "EXPORT_VERSION", "json_path", "weights_format", "unpack_mask", "layer_table",
           "write_export", "read_weights", "load_export"]
