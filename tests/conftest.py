"""Shared fixtures (a tiny random bundle and its ONNX export, made once per session) and the markers' skips.

Markers (registered in pyproject.toml): `gpu` needs a CUDA device, `tensorrt` needs TensorRT and a GPU (both
skip here with the reason), `serve` starts a real `cdx serve` (Ray), `slow` takes over ~20 s on 2 cores;
`pytest -m "not slow"` is the quick subset for contributors.
"""
from __future__ import annotations

import functools

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def tensorrt_missing() -> str | None:
    """Why TensorRT tests cannot run here (None: they can)."""
    from cdx.backends.trt import available

    ok, why = available()
    return None if ok else why


# The slow tests, measured (`pytest --durations=80` on the 2-core EPYC while it was shared: each over about
# 8 s there, 3-4 s on a quiet machine) and the modules that start servers or several processes: what
# `pytest -m "not slow"` leaves out. A test file may also mark its own tests with @pytest.mark.slow.
SLOW_MODULES = ("test_serve.py", "test_train_dist.py", "test_backends_openvino_int8.py", "test_deepcache.py")
SLOW_TESTS = (
    "test_bench_all_covers_every_registered_backend", "test_splices_meet_collaborative_and_no_temporal",
    "test_train_init_from_a_bundle", "test_compiled_matches_eager_on_the_cpu", "test_train_stages_assemble_and_run",
    "test_first_use_export_survives_a_killed_run", "test_a_tampered_cache_entry_is_exported_again",
    "test_head_pad_is_exact_through_onnx_runtime", "test_freeu_through_onnxruntime_matches_torch",
    "test_onnx_auto_backend_exports_into_cache", "test_verify_export_equals_a_direct_onnxruntime_comparison",
    "test_train_data_is_the_same_from_several_processes", "test_openvino_runs_freeu_as_torch_does",
    "test_train_vae_loss_falls_on_a_fixed_batch", "test_edit_with_a_guided_collaborator_agrees_across_backends",
    "test_exported_sketch_encoder_matches_torch", "test_three_modalities_through_the_api_on_torch_and_onnxruntime",
    "test_train_diffusers_loss_falls_and_collaborators_stay_frozen", "test_killed_and_terminated_exports_leave",
    "test_runtime_guidance_overrides_the_bundle", "test_polygraphy_cli_compares_saved_reference_outputs",
    "test_edit_reexport_has_the_engines_initializer_names", "test_edit_cli_state_reuse_and_backends",
    "test_openvino_bf16_runs_in_bf16_close_to_fp32", "test_openvino_and_torch_same_image",
    "test_eval_command_writes_json_and_markdown", "test_readme_api_example_runs_as_written",
    "test_freeu_image_through_onnx_runtime_matches_torch", "test_poisoned_copies_of_the_shipped_model",
    "test_eval_command_methods_all_plus_an_extra", "test_eval_takes_a_benchmarks_own_method",
    "test_head_pad_official_head_sizes_are_exact_in_torch", "test_train_collaborator_loss_falls_on_a_fixed_batch",
    "test_head_pad_tiny_preset_is_already_aligned", "test_edit_on_tensorrt_refuses_engines_that_share_no_weight",
    "test_intermediates_are_each_steps_predicted_x0", "test_guided_bundle_through_onnx_matches_torch",
    "test_openvino_matches_onnxruntime_per_network", "test_a_multistep_sampler_through_the_api",
    "test_edit_steps_reduce_reconstruction_loss", "test_an_openvino_blob_cdx_did_not_record",
    "test_a_damaged_openvino_blob_is_compiled_again", "test_unreadable_hash_records_are_written_again",
    "test_bench_variants_dry_run_exercises_every_stage", "test_run_seed_determinism_and_batch",
    "test_bench_isolates_backends_and_reports_costs", "test_run_text_and_mask_torch", "test_cdx_run_takes_cond",
    "test_eval_no_temporal_keeps_each_steps_shaping", "test_edit_bad_inputs", "test_batch_items_are_their_lone",
    "test_train_cli_all_then_run", "test_run_unimodal", "test_real_networks_eager_step_equals_sample",
    "test_damaged_bundle_weights", "test_one_pipeline_shared_by_threads", "test_training_off_a_terminal",
    "test_one_seed_is_the_engines_own_draw", "test_runner_with_the_kernel_matches_the_reference",
    "test_freeu_onnx_runtime_matches_torch_on_a_tiny_unet",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.fspath.basename in SLOW_MODULES or item.name.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu") and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
        elif item.get_closest_marker("tensorrt") and tensorrt_missing():
            item.add_marker(pytest.mark.skip(reason=tensorrt_missing()))

from cdx.models.bundle import save_bundle
from cdx.models.config import preset
from cdx.models.random_init import random_model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    save_bundle(random_model(preset("tiny"), seed=7), path)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_bundle, tmp_path_factory):
    from cdx.export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("onnx") / "tiny"
    export_bundle(tiny_bundle, out)
    return out


@pytest.fixture(scope="session")
def real_mask():
    """A real CelebAMask-HQ label map (official example); skips, saying why, in a clone without ../shared."""
    from golden import examples_dir

    return examples_dir() / "256_masks" / "29980.png"


@pytest.fixture(scope="session")
def mask_png():
    """A label-map PNG in the CelebAMask-HQ format (palette indices = class ids) from the project's own
    synthetic examples: for tests that need a mask file but not a real one."""
    from golden import REPO_ROOT

    return REPO_ROOT / "examples" / "mask_long_hair.png"
