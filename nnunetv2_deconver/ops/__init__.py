"""The math: the NDC update with its paths and dispatch, and DTC. Depends on torch only.

The names below are the interface the layers above use; the modules behind them are this layer's own.
"""
from nnunetv2_deconver.ops.by_dimension import (CHANNELS_LAST, CONV, CONV_FN, CONV_TRANSPOSED, CONV_TRANSPOSED_FN,
                                                INSTANCE_NORM, LINEAR_MODE)
from nnunetv2_deconver.ops.checks import (check_choice, check_integers, check_odd_kernel, check_receptive_field,
                                          check_update_options, is_integer, is_number)
from nnunetv2_deconver.ops.dtc import DeformableTransposedConv, deformable_sample, sampling_lambda
from nnunetv2_deconver.ops.layout import memory_format_of, to_layout
from nnunetv2_deconver.ops.ndc import NDC, nonnegative_deconvolution
from nnunetv2_deconver.ops.ndc_cpu_fused import fused_update, fused_update_applies, ratio_major
from nnunetv2_deconver.ops.ndc_dispatch import (IMPLEMENTATIONS, compute_layout, force_implementation,
                                                forced_implementation, select_implementation)
from nnunetv2_deconver.ops.ndc_paths import PATHS, NdcPath

__all__ = ["CHANNELS_LAST", "CONV", "CONV_FN", "CONV_TRANSPOSED", "CONV_TRANSPOSED_FN", "INSTANCE_NORM",
           "LINEAR_MODE", "check_choice", "check_integers", "check_odd_kernel", "check_receptive_field",
           "check_update_options", "is_integer", "is_number", "DeformableTransposedConv", "deformable_sample",
           "sampling_lambda", "memory_format_of", "to_layout", "NDC", "nonnegative_deconvolution",
           "fused_update", "fused_update_applies", "ratio_major", "IMPLEMENTATIONS",
           "compute_layout", "force_implementation", "forced_implementation", "select_implementation", "PATHS",
           "NdcPath"]
