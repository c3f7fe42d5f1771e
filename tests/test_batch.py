"""Batch runs (``pixseg run``): cohort model, incremental re-runs, one bad image failing alone, schedulers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import make_blob_image, raise_if_dask_computes

from pixseg.cli import main
from pixseg.features import make_feature_spec
from pixseg.fitting import fit_cohort
from pixseg.options import FitOptions, ReadOptions
from pixseg.runner import segment
from pixseg.sample_graph import build_candidates
from pixseg.sampling import SampleSource, cohort_seed, pixel_keys, plan_blocks, take_pooled_sample

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIZES = [(150, 230), (90, 100), (120, 170)]


def _labels(path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["0"][:]


@pytest.fixture
def slides(tmp_path) -> list[str]:
    """Three RGB tiled TIFFs of different sizes (64 x 64 tiles)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    paths = []
    for i, (height, width) in enumerate(SIZES):
        path = folder / f"slide{i}.tif"
        tifffile.imwrite(path, make_blob_image(height, width, seed=i), tile=(64, 64), photometric="rgb")
        paths.append(str(path))
    return paths


def _config(tmp_path, slides, *, extra: str = "", name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(
        f"inputs: ['{os.path.dirname(slides[0])}/*.tif']\noutput: {{directory: out}}\n"
        f"clusters: 3\nsampling: {{size: 4000}}\nread: {{chunk: 64}}\n{extra}"
    )
    return str(path)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary(directory) -> dict:
    return json.loads((Path(directory) / "pixseg-run.json").read_text())


def test_pooled_sample_is_the_smallest_keys_over_all_images():
    rng = np.random.default_rng(1)
    images = [rng.random((37, 53, 2), dtype=np.float32), rng.random((20, 31, 2), dtype=np.float32)]
    images[0][:30, :40] = np.nan  # image 0: 1981 - 1200 = 781 valid pixels, image 1: 620
    parts = []
    for i, image in enumerate(images):
        spec = make_feature_spec("channels", n_channels=2, has_alpha=False, dtype=image.dtype, value_range=(0.0, 1.0))
        source = SampleSource(pixels=image, spec=spec, scale=(1.0, 1.0), mask=None)
        plan = plan_blocks(image.shape[:2], stride=1, seed=cohort_seed(7, i), block=11)
        parts.append(build_candidates(source, plan, threshold=1.0, seed=cohort_seed(7, i)).compute())
    sample, counts = take_pooled_sample(parts, 300)
    pooled = []
    for i, image in enumerate(images):
        rows, cols = np.nonzero(~np.isnan(image[..., 0]))
        keys = pixel_keys(rows, cols, width=image.shape[1], seed=cohort_seed(7, i))
        pooled += [(key, i, r * image.shape[1] + c, image[r, c]) for key, r, c in zip(keys, rows, cols, strict=True)]
    pooled.sort(key=lambda item: item[:3])
    np.testing.assert_array_equal(sample, np.array([item[3] for item in pooled[:300]]))
    assert counts.tolist() == [sum(item[1] == i for item in pooled[:300]) for i in range(2)]
    assert abs(counts[0] / 300 - 781 / 1401) < 0.1  # in proportion to the valid pixels
    assert len({cohort_seed(7, i) for i in range(100)}) == 100 and cohort_seed(7, 0) != cohort_seed(8, 0)


def test_cohort_contributions_follow_valid_pixels_and_a_bad_image_is_left_out(tmp_path, slides):
    bad = tmp_path / "slides" / "broken.tif"
    bad.write_bytes(b"not a tiff")
    cohort = fit_cohort([*slides, str(bad)], read=ReadOptions(chunk=64), fit=FitOptions(clusters=3, sample_size=6000))
    assert cohort.inputs == tuple(slides) and list(cohort.failed) == [str(bad)]
    pixels = np.array([h * w for h, w in SIZES], dtype=float)
    shares = np.array(cohort.contributions) / sum(cohort.contributions)
    np.testing.assert_allclose(shares, pixels / pixels.sum(), atol=0.03)
    assert sum(cohort.contributions) == 6000 and cohort.model.n_clusters == 3


@pytest.mark.slow
def test_fit_once_same_labels_on_threads_local_and_per_image_apply(tmp_path, capsys, slides):
    config = _config(tmp_path, slides)
    code, out, _ = _run(capsys, "run", config, "-q")
    assert code == 0 and "3 done, 0 skipped, 0 failed" in out
    code, _, _ = _run(
        capsys, "run", config, "-q", "--scheduler", "local", "--workers", "2", "--set", "output.directory=local"
    )
    assert code == 0
    model = tmp_path / "out" / "cohort-model.json"
    assert json.loads(model.read_text())["provenance"]["cohort"][2]["input"] == slides[2]
    for i, slide in enumerate(slides):
        batch = _labels(tmp_path / "out" / f"slide{i}.zarr")
        assert batch.shape == SIZES[i] and set(np.unique(batch)) == {1, 2, 3}
        np.testing.assert_array_equal(batch, _labels(tmp_path / "local" / f"slide{i}.zarr"))
        code, _, _ = _run(capsys, "apply", model, slide, tmp_path / f"single{i}.zarr", "-q")
        assert code == 0
        np.testing.assert_array_equal(batch, _labels(tmp_path / f"single{i}.zarr"))
    summary = _summary(tmp_path / "out")
    assert summary["format"] == "pixseg-run-summary" and summary["counts"] == {"done": 3, "skipped": 0, "failed": 0}


@pytest.mark.slow
def test_rerun_skips_done_images_and_processes_only_new_or_changed_ones(tmp_path, capsys, slides):
    config = _config(tmp_path, slides)
    assert _run(capsys, "run", config, "-q")[0] == 0
    model = tmp_path / "out" / "cohort-model.json"
    model_bytes = model.read_bytes()
    before = _labels(tmp_path / "out" / "slide0.zarr")
    code, out, _ = _run(capsys, "run", config, "-q")
    assert code == 0 and "0 done, 3 skipped, 0 failed" in out
    new = tmp_path / "slides" / "slide3.tif"
    tifffile.imwrite(new, make_blob_image(80, 70, seed=9), tile=(64, 64), photometric="rgb")
    changed = Path(slides[1])
    tifffile.imwrite(changed, make_blob_image(*SIZES[1], seed=5), tile=(64, 64), photometric="rgb")
    code, out, _ = _run(capsys, "run", config, "-q")
    assert code == 0 and "2 done, 2 skipped, 0 failed" in out
    statuses = {Path(row["input"]).name: row["status"] for row in _summary(tmp_path / "out")["images"]}
    assert statuses == {"slide0.tif": "skipped", "slide1.tif": "done", "slide2.tif": "skipped", "slide3.tif": "done"}
    assert model.read_bytes() == model_bytes  # the cohort model is reused, so labels keep their meaning
    np.testing.assert_array_equal(_labels(tmp_path / "out" / "slide0.zarr"), before)
    code, out, _ = _run(capsys, "run", config, "-q", "--set", "clusters=4")  # other fit settings: all redone
    assert code == 0 and "4 done, 0 skipped" in out and model.read_bytes() != model_bytes


def test_a_bad_image_fails_alone_and_the_run_exits_non_zero(tmp_path, capsys, slides):
    (tmp_path / "slides" / "corrupt.tif").write_bytes(b"II*\x00garbage")
    config = _config(tmp_path, slides)
    code, out, err = _run(capsys, "run", config, "-q")
    assert code == 3 and "3 done, 0 skipped, 1 failed" in out
    assert "failed: " in err and "corrupt.tif" in err and "Traceback" not in err
    summary = _summary(tmp_path / "out")
    failed = [row for row in summary["images"] if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["input"].endswith("corrupt.tif") and "InputError" in failed[0]["error"]
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    code, out, _ = _run(capsys, "run", config, "-q")  # still failing; the rest stays done
    assert code == 3 and "0 done, 3 skipped, 1 failed" in out


@pytest.mark.slow
def test_per_image_models_equal_segment_and_saved_model_is_applied(tmp_path, capsys, slides):
    config = _config(tmp_path, slides, extra="model: per-image\n")
    assert _run(capsys, "run", config, "-q")[0] == 0
    fit = FitOptions(clusters=3, sample_size=4000)
    for i, slide in enumerate(slides):
        segment(slide, str(tmp_path / f"seg{i}.zarr"), read=ReadOptions(chunk=64), fit=fit)
        np.testing.assert_array_equal(_labels(tmp_path / "out" / f"slide{i}.zarr"), _labels(tmp_path / f"seg{i}.zarr"))
        assert (tmp_path / "out" / f"slide{i}.zarr.model.json").is_file()
    saved = tmp_path / "out" / "slide0.zarr.model.json"
    code, out, _ = _run(capsys, "run", config, "-q", "--set", f"model={saved}", "--set", "output.directory=applied")
    assert code == 0 and "3 done" in out
    np.testing.assert_array_equal(_labels(tmp_path / "applied" / "slide0.zarr"), _labels(tmp_path / "seg0.zarr"))


@pytest.mark.slow
def test_outputs_not_written_by_the_batch_are_replaced_only_with_overwrite(tmp_path, capsys, slides):
    segment(slides[0], str(tmp_path / "out" / "slide0.zarr"), fit=FitOptions(clusters=2, sample_size=500))
    config = _config(tmp_path, slides)
    code, out, err = _run(capsys, "run", config, "-q")
    assert code == 3 and "2 done, 0 skipped, 1 failed" in out and "output.overwrite" in err
    code, out, _ = _run(capsys, "run", config, "-q", "--set", "output.overwrite=true")
    assert code == 0 and "1 done, 2 skipped" in out
    assert _labels(tmp_path / "out" / "slide0.zarr").max() == 3


def test_dry_run_prints_the_plan_and_computes_nothing(tmp_path, capsys, slides):
    config = _config(tmp_path, slides, extra="compute: {scheduler: slurm, workers: 4, cores: 2, memory: 4GB}\n")
    with raise_if_dask_computes():
        code, out, _ = _run(capsys, "run", config, "--dry-run")
    assert code == 0
    assert "run   " + slides[0] + " (150x230x3 uint8, 12 chunks of 64x64)" in out
    assert "images: 3 (3 run)" in out and "fit-once: fit" in out
    assert "slurm via dask-jobqueue: 4 job(s), cores=2, memory=4GB" in out
    assert "estimated memory per worker:" in out and "(2 thread(s) per worker)" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_example_configs_run(tmp_path, capsys, slides):
    quick = ["--set", f"inputs=['{os.path.dirname(slides[0])}/*.tif']", "--set", f"output.directory={tmp_path}/q"]
    code, out, _ = _run(capsys, "run", CONFIGS / "quick-local.yaml", "-q", *quick, "--set", "sampling.size=3000")
    assert code == 0 and "3 done" in out
    assert (tmp_path / "q" / "slide0-labels.zarr").is_dir()

    glass = np.full((160, 200, 3), 238, dtype=np.uint8)  # a tissue blob on near-white glass
    yy, xx = np.mgrid[:160, :200]
    tissue = (yy - 80) ** 2 / 60**2 + (xx - 100) ** 2 / 75**2 < 1
    glass[tissue] = make_blob_image(160, 200, seed=3)[tissue] // 2 + np.array([90, 40, 90], dtype=np.uint8)
    slide = tmp_path / "he.tif"
    tifffile.imwrite(slide, glass, tile=(64, 64), photometric="rgb")
    he = ["--set", f"inputs=[{slide}]", "--set", f"output.directory={tmp_path}/he", "--set", "compute.workers=2"]
    code, out, _ = _run(capsys, "run", CONFIGS / "wsi-he-mask.yaml", "-q", *he, "--set", "clusters=3")
    assert code == 0 and "1 done" in out
    labels = _labels(tmp_path / "he" / "he.zarr")
    assert (labels[~tissue] == 0).mean() > 0.95 and (labels[tissue] > 0).mean() > 0.5  # glass masked out


@pytest.mark.slow
def test_an_interrupted_batch_continues_its_outputs(tmp_path, capsys, slides, monkeypatch):
    from pixseg import labelling

    config = _config(tmp_path, slides, extra="model: per-image\n")
    assert _run(capsys, "run", config, "-q", "--set", "output.directory=reference")[0] == 0
    finalise = labelling.finalise_label_zarr

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(labelling, "finalise_label_zarr", interrupt)
    code, _, err = _run(capsys, "run", config, "-q")
    assert code == 130 and "interrupted" in err
    monkeypatch.setattr(labelling, "finalise_label_zarr", finalise)
    code, out, err = _run(capsys, "run", config)
    assert code == 0 and "3 done" in out and "continuing" in err
    for i in range(3):
        np.testing.assert_array_equal(
            _labels(tmp_path / "out" / f"slide{i}.zarr"), _labels(tmp_path / "reference" / f"slide{i}.zarr")
        )
